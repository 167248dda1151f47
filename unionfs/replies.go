package unionfs

import (
	"runtime"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// replyCounter wraps the raw filesystem the FUSE server calls and counts every error reply it sends, by errno:
// what the kernel, and so a program, was told, whichever part of the daemon decided it (the node methods,
// go-fuse's bridge, the directory wrapper). stats.countErr, by contrast, counts only errors that came from a
// layer. The counts are in Stats.Replies; the long tests assert that no unexpected ESTALE, EIO or EINVAL was
// sent.
type replyCounter struct {
	fuse.RawFileSystem
	s *stats
}

func newReplyCounter(raw fuse.RawFileSystem, s *stats) *replyCounter {
	return &replyCounter{RawFileSystem: raw, s: s}
}

// panicReply is go-fuse's PanicHandler. go-fuse answers a request whose handler panicked with EIO, and the panic
// unwinds past the reply counter: this counts the reply, counts the panic (Stats.Panics; the long tests require
// none) and logs it with its stack, so that a bug shows as one instead of as a program's unexplained EIO.
func (r *Root) panicReply(obj any) fuse.Status {
	buf := make([]byte, 64<<10)
	buf = buf[:runtime.Stack(buf, false)]
	r.cfg.Logger.Printf("internal error, answered EIO: panic serving a request: %v\n%s", obj, buf)
	r.stats.panics.Add(1)
	r.stats.replies[fuse.EIO].Add(1)
	return fuse.EIO
}

// reply records st and returns it.
func (c *replyCounter) reply(st fuse.Status) fuse.Status {
	if st != fuse.OK && st > 0 && int(st) < len(c.s.replies) {
		c.s.replies[st].Add(1)
	}
	return st
}

func (c *replyCounter) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	return c.reply(c.RawFileSystem.Lookup(cancel, h, name, out))
}

func (c *replyCounter) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	return c.reply(c.RawFileSystem.GetAttr(cancel, in, out))
}

func (c *replyCounter) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	return c.reply(c.RawFileSystem.SetAttr(cancel, in, out))
}

func (c *replyCounter) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return c.reply(c.RawFileSystem.Mknod(cancel, in, name, out))
}

func (c *replyCounter) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return c.reply(c.RawFileSystem.Mkdir(cancel, in, name, out))
}

func (c *replyCounter) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return c.reply(c.RawFileSystem.Unlink(cancel, h, name))
}

func (c *replyCounter) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return c.reply(c.RawFileSystem.Rmdir(cancel, h, name))
}

func (c *replyCounter) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	return c.reply(c.RawFileSystem.Rename(cancel, in, oldName, newName))
}

func (c *replyCounter) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	return c.reply(c.RawFileSystem.Link(cancel, in, name, out))
}

func (c *replyCounter) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return c.reply(c.RawFileSystem.Symlink(cancel, h, target, name, out))
}

func (c *replyCounter) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	b, st := c.RawFileSystem.Readlink(cancel, h)
	return b, c.reply(st)
}

func (c *replyCounter) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	return c.reply(c.RawFileSystem.Access(cancel, in))
}

func (c *replyCounter) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.GetXAttr(cancel, h, attr, dest)
	return n, c.reply(st)
}

func (c *replyCounter) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.ListXAttr(cancel, h, dest)
	return n, c.reply(st)
}

func (c *replyCounter) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	return c.reply(c.RawFileSystem.SetXAttr(cancel, in, attr, data))
}

func (c *replyCounter) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	return c.reply(c.RawFileSystem.RemoveXAttr(cancel, h, attr))
}

func (c *replyCounter) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return c.reply(c.RawFileSystem.Create(cancel, in, name, out))
}

func (c *replyCounter) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	return c.reply(c.RawFileSystem.Tmpfile(cancel, in, out))
}

func (c *replyCounter) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return c.reply(c.RawFileSystem.Open(cancel, in, out))
}

func (c *replyCounter) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	r, st := c.RawFileSystem.Read(cancel, in, buf)
	return r, c.reply(st)
}

func (c *replyCounter) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	return c.reply(c.RawFileSystem.Lseek(cancel, in, out))
}

func (c *replyCounter) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	return c.reply(c.RawFileSystem.GetLk(cancel, in, out))
}

func (c *replyCounter) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return c.reply(c.RawFileSystem.SetLk(cancel, in))
}

func (c *replyCounter) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return c.reply(c.RawFileSystem.SetLkw(cancel, in))
}

func (c *replyCounter) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.Write(cancel, in, data)
	return n, c.reply(st)
}

func (c *replyCounter) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.Writev(cancel, in, data)
	return n, c.reply(st)
}

func (c *replyCounter) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	n, st := c.RawFileSystem.CopyFileRange(cancel, in)
	return n, c.reply(st)
}

func (c *replyCounter) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	return c.reply(c.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf))
}

func (c *replyCounter) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return c.reply(c.RawFileSystem.Flush(cancel, in))
}

func (c *replyCounter) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return c.reply(c.RawFileSystem.Fsync(cancel, in))
}

func (c *replyCounter) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return c.reply(c.RawFileSystem.Fallocate(cancel, in))
}

func (c *replyCounter) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return c.reply(c.RawFileSystem.OpenDir(cancel, in, out))
}

func (c *replyCounter) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return c.reply(c.RawFileSystem.ReadDir(cancel, in, out))
}

func (c *replyCounter) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return c.reply(c.RawFileSystem.ReadDirPlus(cancel, in, out))
}

func (c *replyCounter) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return c.reply(c.RawFileSystem.FsyncDir(cancel, in))
}

func (c *replyCounter) StatFs(cancel <-chan struct{}, in *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	return c.reply(c.RawFileSystem.StatFs(cancel, in, out))
}

func (c *replyCounter) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	return c.reply(c.RawFileSystem.Statx(cancel, in, out))
}
