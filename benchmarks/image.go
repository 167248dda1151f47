package main

import (
	"archive/tar"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// image is the lower layer of every system: a squashfs image of a Debian root with a 1 GiB file, plus the
// inputs of the write workloads. All of it is built once into the cache directory.
type image struct {
	dir       string   // the cache directory
	rootfs    string   // the tree the image is made from
	squashfs  string   // the image
	tarball   string   // 20000 small files for the untar workload
	debs      []string // packages for the dpkg workload
	source    string   // what the tree is: a debootstrap root or a copy of /usr
	appendSet []string // 2000 lower regular files for the append workload (relative paths)
	chmodSet  []string // 1000 others for the chmod workload
}

// bigFile is the 1 GiB file of the image, at its root.
const bigFile = "big"

// debPackages are installed by the dpkg workload; their dependencies are all in a minbase root.
var debPackages = []string{"less", "file", "libmagic1", "libmagic-mgc", "xz-utils", "bzip2", "nano", "libncursesw6"}

func (img *image) describe() string {
	return fmt.Sprintf("%s, %d files in the append set", img.source, len(img.appendSet))
}

// prepareImage builds what is missing in the cache directory and returns the image.
func prepareImage(dir string) (*image, error) {
	img := &image{dir: dir, rootfs: filepath.Join(dir, "rootfs"), squashfs: filepath.Join(dir, "image.sqfs"),
		tarball: filepath.Join(dir, "smallfiles.tar")}
	if err := os.MkdirAll(dir, 0755); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(img.rootfs, "usr/bin/dpkg")); err != nil {
		if err := buildRootfs(img.rootfs); err != nil {
			return nil, err
		}
	}
	img.source = "debootstrap --variant=minbase bookworm"
	if _, err := os.Stat(filepath.Join(img.rootfs, "var/lib/dpkg/status")); err != nil {
		img.source = "a copy of the host's /usr"
	}
	if st, err := os.Stat(filepath.Join(img.rootfs, bigFile)); err != nil || st.Size() != 1<<30 {
		fmt.Println("writing the 1 GiB file")
		if err := writeRandom(filepath.Join(img.rootfs, bigFile), 1<<30); err != nil {
			return nil, err
		}
		os.Remove(img.squashfs)
	}
	if _, err := os.Stat(img.squashfs); err != nil {
		fmt.Println("making the squashfs image (once)")
		if _, err := run("mksquashfs", img.rootfs, img.squashfs+".tmp", "-noappend", "-comp", "gzip", "-quiet"); err != nil {
			return nil, err
		}
		if err := os.Rename(img.squashfs+".tmp", img.squashfs); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(img.tarball); err != nil {
		if err := writeSmallFiles(img.tarball, 20000); err != nil {
			return nil, err
		}
	}
	debdir := filepath.Join(dir, "debs")
	img.debs, _ = filepath.Glob(filepath.Join(debdir, "*.deb"))
	if len(img.debs) < len(debPackages) && img.source != "a copy of the host's /usr" {
		os.MkdirAll(debdir, 0755)
		cmd := exec.Command("apt-get", append([]string{"download"}, debPackages...)...)
		cmd.Dir = debdir
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("apt-get download failed, no dpkg workload: %v: %s\n", err, out)
		}
		img.debs, _ = filepath.Glob(filepath.Join(debdir, "*.deb"))
	}
	if err := img.pickFiles(); err != nil {
		return nil, err
	}
	return img, nil
}

// buildRootfs makes the tree: a minbase Debian root, or a copy of the host's /usr without debootstrap.
func buildRootfs(dst string) error {
	os.RemoveAll(dst)
	if _, err := exec.LookPath("debootstrap"); err == nil {
		fmt.Println("debootstrap --variant=minbase bookworm (once)")
		tmp := dst + ".tmp"
		os.RemoveAll(tmp)
		if _, err := run("debootstrap", "--variant=minbase", "bookworm", tmp, "http://deb.debian.org/debian"); err == nil {
			return os.Rename(tmp, dst)
		}
		fmt.Println("debootstrap failed; copying /usr instead")
		os.RemoveAll(tmp)
	}
	if err := os.MkdirAll(dst, 0755); err != nil {
		return err
	}
	_, err := run("cp", "-a", "/usr", filepath.Join(dst, "usr"))
	return err
}

// writeRandom writes size random bytes to path: incompressible, so squashfs stores them as they are.
func writeRandom(path string, size int64) error {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// writeSmallFiles writes a tar archive of n small files in 200 directories.
func writeSmallFiles(path string, n int) error {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	now := time.Unix(1700000000, 0)
	for d := 0; d < 200; d++ {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%03d/", d), Typeflag: tar.TypeDir, Mode: 0755, ModTime: now}); err != nil {
			return err
		}
	}
	for i := 0; i < n; i++ {
		body := []byte(strings.Repeat(fmt.Sprintf("file %d ", i), 1+i%200))
		h := &tar.Header{Name: fmt.Sprintf("d%03d/f%05d", i%200, i), Mode: 0644, Size: int64(len(body)), ModTime: now}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(body); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// pickFiles chooses the lower files the copy-up workloads change: regular files under usr, in a fixed order.
func (img *image) pickFiles() error {
	var files []string
	err := filepath.Walk(filepath.Join(img.rootfs, "usr"), func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if info.Mode().IsRegular() && info.Size() < 1<<20 {
			rel, _ := filepath.Rel(img.rootfs, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	if len(files) < 3000 {
		return fmt.Errorf("the tree has only %d regular files under usr", len(files))
	}
	// Spread the choice over the tree.
	step := len(files) / 3000
	for i := 0; i < 3000; i++ {
		if i < 2000 {
			img.appendSet = append(img.appendSet, files[i*step])
		} else {
			img.chmodSet = append(img.chmodSet, files[i*step])
		}
	}
	return nil
}

// mount attaches the image read-only on a loop device and mounts it; cleanup undoes both.
func (img *image) mount() (string, func(), error) {
	dev, err := run("losetup", "-f", "--show", "-r", img.squashfs)
	if err != nil {
		return "", nil, err
	}
	dev = strings.TrimSpace(dev)
	mnt, err := os.MkdirTemp("", "bench-lower-")
	if err != nil {
		return "", nil, err
	}
	if _, err := run("mount", "-t", "squashfs", "-o", "ro", dev, mnt); err != nil {
		run("losetup", "-d", dev)
		return "", nil, err
	}
	return mnt, func() {
		run("umount", mnt)
		run("losetup", "-d", dev)
		os.Remove(mnt)
	}, nil
}
