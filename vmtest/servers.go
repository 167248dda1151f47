package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The host serves the image to the guests the two ways LTSP clients get their root: a squashfs image over NBD
// (nbdkit), and the image tree over NFS. This host's kernel has no NFS server, so NFS comes from nfs-ganesha's
// userspace server (VFS backend), NFSv4 only (no portmapper or mountd needed through qemu's user network).

// server is a daemon the harness started, stopped by stop.
type server struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{} // closed once the process has exited (and been reaped)
}

// stop ends the server: SIGTERM, then SIGKILL if it has not exited within five seconds (nfs-ganesha can take
// longer to shut down than the harness wants to wait).
func (s *server) stop() {
	if s == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// freePort returns a TCP port nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startServer starts a daemon in the foreground (so that it is ours to stop), logging to logPath, and waits
// until it listens on port.
func startServer(name string, port int, logPath string, argv ...string) (*server, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s := &server{name: name, cmd: cmd, log: logPath, exited: exited}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return nil, fmt.Errorf("%s exited at once: %s", name, lastLines(readFile(logPath), 5))
		default:
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			return s, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("%s does not listen on port %d after 30 s: %s", name, port, lastLines(readFile(logPath), 5))
}

// startNBD serves the squashfs image read-only over NBD.
func startNBD(imagePath, dir string) (*server, int, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	s, err := startServer("nbdkit", port, filepath.Join(dir, "nbdkit.log"),
		"nbdkit", "--foreground", "--readonly", "--port", fmt.Sprint(port), "--ipaddr", "127.0.0.1",
		"file", imagePath)
	return s, port, err
}

// nfsPseudoPath is the NFSv4 path the image tree is exported under.
const nfsPseudoPath = "/vmroot"

// startNFS exports the image tree read-only over NFSv4 with nfs-ganesha, root not squashed (as LTSP exports its
// images: root reads root's files), numeric owners (no idmapd in the guest's initramfs), no grace period (no
// client has state to reclaim, and a grace period would hold every open for 90 s).
func startNFS(tree, dir string) (*server, int, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	recovery := filepath.Join(dir, "ganesha-recovery")
	if err := os.MkdirAll(recovery, 0755); err != nil {
		return nil, 0, err
	}
	conf := fmt.Sprintf(`NFS_CORE_PARAM {
	Protocols = 4;
	NFS_Port = %d;
	Bind_addr = 127.0.0.1;
	Enable_NLM = false;
	Enable_RQUOTA = false;
	Enable_UDP = false;
}
NFSV4 {
	Graceless = true;
	Only_Numeric_Owners = true;
	RecoveryBackend = fs;
	RecoveryRoot = %s;
}
EXPORT {
	Export_Id = 1;
	Path = %s;
	Pseudo = %s;
	Access_Type = RO;
	Squash = No_Root_Squash;
	Protocols = 4;
	Transports = TCP;
	SecType = sys;
	FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
`, port, recovery, tree, nfsPseudoPath)
	confPath := filepath.Join(dir, "ganesha.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0644); err != nil {
		return nil, 0, err
	}
	logPath := filepath.Join(dir, "ganesha.log")
	s, err := startServer("nfs-ganesha", port, filepath.Join(dir, "ganesha.out"),
		"ganesha.nfsd", "-F", "-f", confPath, "-L", logPath, "-p", filepath.Join(dir, "ganesha.pid"))
	if err != nil && fileExists(logPath) {
		err = fmt.Errorf("%w; its log: %s", err, lastLines(readFile(logPath), 5))
	}
	return s, port, err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// lastLines returns the last n lines of s, joined with " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// firstLine returns the first line of s.
func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
