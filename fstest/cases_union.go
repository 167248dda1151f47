package fstest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// UnionCases holds checks of the merged view of a union with overlayfs semantics, where the upper layer uses the
// overlay marker format (whiteouts are character devices 0/0, opaque directories carry trusted.overlay.opaque).
var UnionCases = map[string]UnionCase{
	"UpperShadowsLower":       UpperShadowsLower,
	"LowerPrecedence":         LowerPrecedence,
	"DirectoryMerge":          DirectoryMerge,
	"FileHidesDirectoryBelow": FileHidesDirectoryBelow,
	"DirectoryOverFile":       DirectoryOverFile,
	"WhiteoutHidesName":       WhiteoutHidesName,
	"WhiteoutInLowerLayer":    WhiteoutInLowerLayer,
	"OpaqueDirectory":         OpaqueDirectory,
	"OpaqueDirectoryInLower":  OpaqueDirectoryInLower,
	"MarkersNeverShown":       MarkersNeverShown,
	"MergedInodeNumbers":      MergedInodeNumbers,
	"MergedDinoMatchesStat":   MergedDinoMatchesStat,
	"MergedReaddirSeek":       MergedReaddirSeek,
	"LargeMergedDirectory":    LargeMergedDirectory,
	"SymlinksAcrossLayers":    SymlinksAcrossLayers,
	"SpecialFilesBelow":       SpecialFilesBelow,
	"NewNamesGoToUpper":       NewNamesGoToUpper,
	"StatfsReportsUpper":      StatfsReportsUpper,
	"LowerXattrsVisible":      LowerXattrsVisible,
}

// whiteoutAt makes an overlay whiteout for name in dir (root only).
func whiteoutAt(t *testing.T, dir, name string) {
	t.Helper()
	requireRoot(t)
	if err := unix.Mknod(filepath.Join(dir, name), unix.S_IFCHR, 0); err != nil {
		t.Fatalf("mknod whiteout: %v", err)
	}
}

// makeOpaque marks dir opaque in the overlay format (root only).
func makeOpaque(t *testing.T, dir string) {
	t.Helper()
	requireRoot(t)
	if err := unix.Lsetxattr(dir, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatalf("set opaque xattr: %v", err)
	}
}

// UpperShadowsLower: a name in the upper layer hides the lower object of that name.
func UpperShadowsLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "lower", 0644)
	writeFile(t, filepath.Join(u.Upper(), "f"), "upper", 0600)
	mnt := u.Mount(t)
	wantContent(t, filepath.Join(mnt, "f"), "upper")
	if st := lstat(t, filepath.Join(mnt, "f")); st.Mode&07777 != 0600 {
		t.Errorf("mode %o, want the upper file's 0600", st.Mode&07777)
	}
}

// LowerPrecedence: a higher lower layer hides a deeper one; names only the deeper one has are visible.
func LowerPrecedence(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "top", 0644)
	writeFile(t, filepath.Join(u.Lower(1), "f"), "bottom", 0644)
	writeFile(t, filepath.Join(u.Lower(1), "only-bottom"), "deep", 0644)
	mnt := u.Mount(t)
	wantContent(t, filepath.Join(mnt, "f"), "top")
	wantContent(t, filepath.Join(mnt, "only-bottom"), "deep")
	wantNames(t, mnt, "f", "only-bottom")
}

// DirectoryMerge: directories of one name in several layers merge; each name is listed once, from the topmost
// layer that has it.
func DirectoryMerge(t *testing.T, u Union) {
	for i, dir := range []string{u.Upper(), u.Lower(0), u.Lower(1)} {
		mkdirAll(t, filepath.Join(dir, "d", "sub"))
		writeFile(t, filepath.Join(dir, "d", "shared"), fmt.Sprintf("layer %d", i), 0644)
		writeFile(t, filepath.Join(dir, "d", fmt.Sprintf("own%d", i)), "", 0644)
		writeFile(t, filepath.Join(dir, "d", "sub", fmt.Sprintf("deep%d", i)), "", 0644)
	}
	mnt := u.Mount(t)
	wantNames(t, filepath.Join(mnt, "d"), "own0", "own1", "own2", "shared", "sub")
	wantNames(t, filepath.Join(mnt, "d", "sub"), "deep0", "deep1", "deep2")
	wantContent(t, filepath.Join(mnt, "d", "shared"), "layer 0")
	checkDinoMatchesStat(t, filepath.Join(mnt, "d"))
}

// FileHidesDirectoryBelow: a non-directory hides a directory of the same name below it.
func FileHidesDirectoryBelow(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Upper(), "x"), "file", 0644)
	mkdirAll(t, filepath.Join(u.Lower(0), "x"))
	writeFile(t, filepath.Join(u.Lower(0), "x", "hidden"), "", 0644)
	writeFile(t, filepath.Join(u.Lower(0), "y"), "lower0 file", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "y"))
	writeFile(t, filepath.Join(u.Lower(1), "y", "hidden"), "", 0644)
	mnt := u.Mount(t)
	wantContent(t, filepath.Join(mnt, "x"), "file")
	wantContent(t, filepath.Join(mnt, "y"), "lower0 file")
	wantAbsent(t, filepath.Join(mnt, "x", "hidden"))
}

// DirectoryOverFile: a directory hides a non-directory below it and does not merge with anything deeper.
func DirectoryOverFile(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Upper(), "x"))
	writeFile(t, filepath.Join(u.Upper(), "x", "u"), "", 0644)
	writeFile(t, filepath.Join(u.Lower(0), "x"), "hidden file", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "x"))
	writeFile(t, filepath.Join(u.Lower(1), "x", "below-the-file"), "", 0644)
	mnt := u.Mount(t)
	wantNames(t, filepath.Join(mnt, "x"), "u")
}

// WhiteoutHidesName: an upper whiteout hides lower files and directories, in lookups and in listings.
func WhiteoutHidesName(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "gone"), "", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "gonedir", "inner"))
	writeFile(t, filepath.Join(u.Lower(0), "kept"), "", 0644)
	whiteoutAt(t, u.Upper(), "gone")
	whiteoutAt(t, u.Upper(), "gonedir")
	mnt := u.Mount(t)
	wantAbsent(t, filepath.Join(mnt, "gone"))
	wantAbsent(t, filepath.Join(mnt, "gonedir"))
	wantAbsent(t, filepath.Join(mnt, "gonedir", "inner"))
	wantNames(t, mnt, "kept")
}

// WhiteoutInLowerLayer: a whiteout in a lower layer (a former upper) hides names of the layers below it.
func WhiteoutInLowerLayer(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(1), "gone"), "", 0644)
	writeFile(t, filepath.Join(u.Lower(1), "kept"), "", 0644)
	whiteoutAt(t, u.Lower(0), "gone")
	mnt := u.Mount(t)
	wantAbsent(t, filepath.Join(mnt, "gone"))
	wantNames(t, mnt, "kept")
}

// OpaqueDirectory: an opaque upper directory hides everything below its name.
func OpaqueDirectory(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(0), "d", "sub"))
	writeFile(t, filepath.Join(u.Lower(0), "d", "old"), "", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "d"))
	writeFile(t, filepath.Join(u.Lower(1), "d", "older"), "", 0644)
	mkdirAll(t, filepath.Join(u.Upper(), "d"))
	writeFile(t, filepath.Join(u.Upper(), "d", "new"), "new", 0644)
	makeOpaque(t, filepath.Join(u.Upper(), "d"))
	mnt := u.Mount(t)
	wantNames(t, filepath.Join(mnt, "d"), "new")
	wantAbsent(t, filepath.Join(mnt, "d", "old"))
	wantAbsent(t, filepath.Join(mnt, "d", "sub"))
	checkDinoMatchesStat(t, filepath.Join(mnt, "d"))
	checkDinoMatchesStat(t, mnt)
}

// OpaqueDirectoryInLower: an opaque directory in a lower layer hides the layers below it.
func OpaqueDirectoryInLower(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(0), "d"))
	writeFile(t, filepath.Join(u.Lower(0), "d", "top"), "", 0644)
	makeOpaque(t, filepath.Join(u.Lower(0), "d"))
	mkdirAll(t, filepath.Join(u.Lower(1), "d"))
	writeFile(t, filepath.Join(u.Lower(1), "d", "hidden"), "", 0644)
	mkdirAll(t, filepath.Join(u.Upper(), "d"))
	writeFile(t, filepath.Join(u.Upper(), "d", "up"), "", 0644)
	mnt := u.Mount(t)
	wantNames(t, filepath.Join(mnt, "d"), "top", "up")
}

// MarkersNeverShown: whiteouts are not listed and overlay's private xattrs are not listed or readable.
func MarkersNeverShown(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "gone"), "", 0644)
	mkdirAll(t, filepath.Join(u.Lower(0), "d"))
	whiteoutAt(t, u.Upper(), "gone")
	mkdirAll(t, filepath.Join(u.Upper(), "d"))
	makeOpaque(t, filepath.Join(u.Upper(), "d"))
	mnt := u.Mount(t)
	for _, e := range readDirRaw(t, mnt) {
		if e.typ == unix.DT_CHR {
			t.Errorf("listing shows a character device %s", e.name)
		}
	}
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(filepath.Join(mnt, "d"), buf)
	if err != nil {
		t.Fatalf("Llistxattr: %v", err)
	}
	if bytes.Contains(buf[:n], []byte("overlay.")) {
		t.Errorf("listxattr shows the union's private attributes: %q", buf[:n])
	}
	_, err = unix.Lgetxattr(filepath.Join(mnt, "d"), "trusted.overlay.opaque", buf)
	if err == nil {
		t.Errorf("trusted.overlay.opaque is readable through the union")
	}
}

// fillForInodes gives every layer a file at the root and in a directory "d" merged from all layers.
func fillForInodes(t *testing.T, u Union) {
	for i, dir := range []string{u.Upper(), u.Lower(0), u.Lower(1)} {
		mkdirAll(t, filepath.Join(dir, "d"))
		writeFile(t, filepath.Join(dir, "d", fmt.Sprintf("f%d", i)), "", 0644)
		writeFile(t, filepath.Join(dir, fmt.Sprintf("top%d", i)), "", 0644)
	}
}

// MergedDinoMatchesStat: readdir's d_ino equals st_ino in merged directories, for merged subdirectories too.
func MergedDinoMatchesStat(t *testing.T, u Union) {
	fillForInodes(t, u)
	mnt := u.Mount(t)
	checkDinoMatchesStat(t, mnt)
	checkDinoMatchesStat(t, filepath.Join(mnt, "d"))
}

// MergedInodeNumbers: distinct objects have distinct numbers, and numbers stay the same when the kernel forgets
// and looks the objects up again.
func MergedInodeNumbers(t *testing.T, u Union) {
	fillForInodes(t, u)
	mnt := u.Mount(t)
	seen := map[uint64]string{}
	for _, dir := range []string{mnt, filepath.Join(mnt, "d")} {
		for _, name := range listNames(t, dir) {
			p := filepath.Join(dir, name)
			st := lstat(t, p)
			if other, dup := seen[st.Ino]; dup {
				t.Errorf("%s and %s share inode number %d", p, other, st.Ino)
			}
			seen[st.Ino] = p
		}
	}
	if os.Geteuid() == 0 {
		// Make the kernel forget cached dentries and inodes, then look everything up again.
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
			t.Fatalf("drop_caches: %v", err)
		}
	}
	for ino, p := range seen {
		if st := lstat(t, p); st.Ino != ino {
			t.Errorf("%s: inode number changed from %d to %d", p, ino, st.Ino)
		}
	}
}

// MergedReaddirSeek: telldir/seekdir work in a directory merged from three layers with overlapping names.
func MergedReaddirSeek(t *testing.T, u Union) {
	for i, dir := range []string{u.Upper(), u.Lower(0), u.Lower(1)} {
		mkdirAll(t, filepath.Join(dir, "d"))
		for j := 0; j < 150; j++ {
			if j%3 == i || j%5 == 0 {
				writeFile(t, filepath.Join(dir, "d", fmt.Sprintf("e%03d", j)), "", 0644)
			}
		}
	}
	mnt := u.Mount(t)
	d := filepath.Join(mnt, "d")
	full := readDirRaw(t, d)
	if got := len(names(full)); got != 150 {
		t.Fatalf("merged listing has %d names, want 150", got)
	}
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, at := range []int{100, 1, 151, 40, 0} {
		var off int64
		if at > 0 {
			off = full[at-1].off
		}
		if _, err := unix.Seek(fd, off, 0); err != nil {
			t.Fatalf("seekdir: %v", err)
		}
		got := readDirents(t, fd, 1)
		if len(got) != 1 || got[0].name != full[at].name {
			t.Fatalf("after seekdir to entry %d got %v, want %s", at, got, full[at].name)
		}
	}
}

// LargeMergedDirectory: 10000 names spread over three layers, many in two or three of them, are listed once each.
func LargeMergedDirectory(t *testing.T, u Union) {
	const n = 10000
	for i, dir := range []string{u.Upper(), u.Lower(0), u.Lower(1)} {
		mkdirAll(t, filepath.Join(dir, "big"))
		for j := 0; j < n; j++ {
			if j%3 == i || j%7 == 0 {
				fd, err := unix.Open(filepath.Join(dir, "big", fmt.Sprintf("name-%05d", j)),
					unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0644)
				if err != nil {
					t.Fatal(err)
				}
				unix.Close(fd)
			}
		}
	}
	mnt := u.Mount(t)
	got := listNames(t, filepath.Join(mnt, "big"))
	if len(got) != n {
		t.Fatalf("listed %d names, want %d", len(got), n)
	}
	for j, name := range got {
		if want := fmt.Sprintf("name-%05d", j); name != want {
			t.Fatalf("entry %d is %s, want %s", j, name, want)
		}
	}
}

// SymlinksAcrossLayers: a lower symlink resolves through the merged view, to objects of any layer.
func SymlinksAcrossLayers(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Upper(), "target-in-upper"), "from upper", 0644)
	if err := os.Symlink("target-in-upper", filepath.Join(u.Lower(1), "link")); err != nil {
		t.Fatal(err)
	}
	mkdirAll(t, filepath.Join(u.Lower(0), "realdir"))
	writeFile(t, filepath.Join(u.Lower(0), "realdir", "f"), "via dir link", 0644)
	if err := os.Symlink("realdir", filepath.Join(u.Lower(0), "dirlink")); err != nil {
		t.Fatal(err)
	}
	mnt := u.Mount(t)
	wantContent(t, filepath.Join(mnt, "link"), "from upper")
	wantContent(t, filepath.Join(mnt, "dirlink", "f"), "via dir link")
	if got, err := os.Readlink(filepath.Join(mnt, "dirlink")); err != nil || got != "realdir" {
		t.Fatalf("Readlink: %q %v", got, err)
	}
}

// SpecialFilesBelow: FIFOs and (as root) device nodes of a lower layer keep their type and device number.
func SpecialFilesBelow(t *testing.T, u Union) {
	if err := unix.Mkfifo(filepath.Join(u.Lower(0), "fifo"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(filepath.Join(u.Lower(0), "fifo"), 0620); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0
	if root {
		if err := unix.Mknod(filepath.Join(u.Lower(1), "zero"), unix.S_IFCHR|0666, int(unix.Mkdev(1, 5))); err != nil {
			t.Fatal(err)
		}
	}
	mnt := u.Mount(t)
	if st := lstat(t, filepath.Join(mnt, "fifo")); st.Mode != unix.S_IFIFO|0620 {
		t.Errorf("fifo mode %o", st.Mode)
	}
	if !root {
		return
	}
	st := lstat(t, filepath.Join(mnt, "zero"))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 5) {
		t.Errorf("device mode %o rdev %x", st.Mode, st.Rdev)
	}
	f, err := os.Open(filepath.Join(mnt, "zero"))
	if err != nil {
		t.Fatalf("open a lower device node: %v", err)
	}
	defer f.Close()
	buf := []byte{1, 2, 3}
	if _, err := f.Read(buf); err != nil || !bytes.Equal(buf, []byte{0, 0, 0}) {
		t.Errorf("reading /dev/zero's copy: %v %v", buf, err)
	}
}

// NewNamesGoToUpper: names created in the merged view land in the upper layer; the lowers are unchanged.
func NewNamesGoToUpper(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "existing"), "", 0644)
	mnt := u.Mount(t)
	writeFile(t, filepath.Join(mnt, "new-file"), "written", 0640)
	mkdirAll(t, filepath.Join(mnt, "new-dir", "nested"))
	if err := os.Symlink("new-file", filepath.Join(mnt, "new-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "new-dir"), filepath.Join(mnt, "renamed-dir")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(mnt, "scratch"), "", 0644)
	if err := os.Remove(filepath.Join(mnt, "scratch")); err != nil {
		t.Fatal(err)
	}
	wantNames(t, mnt, "existing", "new-file", "new-link", "renamed-dir")
	u.Unmount(t)
	wantContent(t, filepath.Join(u.Upper(), "new-file"), "written")
	wantNames(t, u.Upper(), "new-file", "new-link", "renamed-dir")
	wantNames(t, filepath.Join(u.Upper(), "renamed-dir"), "nested")
	wantNames(t, u.Lower(0), "existing")
	wantNames(t, u.Lower(1))
}

// StatfsReportsUpper: statfs of the merged view reports the upper layer's filesystem.
func StatfsReportsUpper(t *testing.T, u Union) {
	mnt := u.Mount(t)
	var su, sm unix.Statfs_t
	if err := unix.Statfs(u.Upper(), &su); err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(mnt, &sm); err != nil {
		t.Fatal(err)
	}
	if sm.Blocks*uint64(sm.Bsize) != su.Blocks*uint64(su.Bsize) {
		t.Errorf("union reports %d bytes in all, the upper filesystem %d", sm.Blocks*uint64(sm.Bsize),
			su.Blocks*uint64(su.Bsize))
	}
}

// LowerXattrsVisible: xattrs of lower objects read through the merged view.
func LowerXattrsVisible(t *testing.T, u Union) {
	p := filepath.Join(u.Lower(1), "f")
	writeFile(t, p, "", 0644)
	if err := unix.Lsetxattr(p, "user.from", []byte("lower"), 0); err != nil {
		t.Skipf("the lower filesystem has no user xattrs: %v", err)
	}
	mnt := u.Mount(t)
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(mnt, "f"), "user.from", buf)
	if err != nil || string(buf[:n]) != "lower" {
		t.Fatalf("Lgetxattr: %q %v", buf[:n], err)
	}
	_, err = unix.Lgetxattr(filepath.Join(mnt, "f"), "user.absent", buf)
	wantErrno(t, "Lgetxattr of an absent attribute", err, syscall.ENODATA)
}
