package whiteout

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Move implements Format. A whiteout replaced by a directory is exchanged with it (rename(2) cannot put a
// directory over a non-directory), the exchange leaving the whiteout at the old name where hideOld wants one; the
// old name is whited out by the rename itself otherwise (RENAME_WHITEOUT).
func (o Overlay) Move(src Dir, name string, dst Dir, newName string, isDir, hideOld, replaceMarker bool) error {
	if replaceMarker && isDir {
		if err := unix.Renameat2(src.Fd, name, dst.Fd, newName, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		if !hideOld {
			return unix.Unlinkat(src.Fd, name, 0)
		}
		return nil
	}
	var flags uint
	if hideOld {
		flags = unix.RENAME_WHITEOUT
	}
	err := unix.Renameat2(src.Fd, name, dst.Fd, newName, flags)
	if err == syscall.EINVAL && flags != 0 {
		// No RENAME_WHITEOUT on this filesystem: rename, then white the old name out.
		if err = unix.Renameat2(src.Fd, name, dst.Fd, newName, 0); err == nil {
			_, err = o.Hide(src, name, TempName())
		}
	}
	return err
}

// Move implements Format.
func (a Aufs) Move(src Dir, name string, dst Dir, newName string, isDir, hideOld, replaceMarker bool) error {
	return moveBeside(a, src, name, dst, newName, isDir, hideOld, replaceMarker)
}

// Move implements Format.
func (u Unionfs) Move(src Dir, name string, dst Dir, newName string, isDir, hideOld, replaceMarker bool) error {
	return moveBeside(u, src, name, dst, newName, isDir, hideOld, replaceMarker)
}

// moveBeside moves an object for the formats whose markers live beside the names (aufs, unionfs-fuse): the old
// name is whited out first (the object still hides the lower ones meanwhile), then the object moves.
func moveBeside(f Format, src Dir, name string, dst Dir, newName string, isDir, hideOld, replaceMarker bool) error {
	if hideOld {
		if _, err := f.Hide(src, name, TempName()); err != nil {
			return err
		}
	}
	if !replaceMarker {
		return unix.Renameat2(src.Fd, name, dst.Fd, newName, 0)
	}
	// The new name is free in the upper layer: the object moves there in one rename, then the marker goes. Were
	// the daemon killed in between, the object shows at its new name (a marker beside an object hides nothing of
	// it; beside a directory it makes it opaque, as a moved directory is), never under a temporary name at
	// neither of its names.
	if err := unix.Renameat2(src.Fd, name, dst.Fd, newName, unix.RENAME_NOREPLACE); err != nil {
		return err
	}
	if err := f.Publish(dst, newName, newName, isDir); err != nil {
		unix.Renameat2(dst.Fd, newName, src.Fd, name, unix.RENAME_NOREPLACE)
		return err
	}
	return nil
}
