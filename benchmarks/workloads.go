package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// workload is one measurement.
type workload struct {
	name   string
	unit   string // "s", "MB/s" or "MiB"
	higher bool   // a higher value is better (throughput)
	writes bool   // changes the union: not for read-only systems; on the bare system it runs in the tmpfs
	upOnly bool   // only meaningful on a union (copy-up, package install): n/a on the bare system
	rss    bool   // measures the daemon
	// run measures on the mount (or, for writes on the bare system, on the tmpfs).
	run func(e *env) (float64, error)
}

// env is what a workload runs against.
type env struct {
	mnt   string // where to run
	img   *image
	pid   int // the FUSE daemon, or 0
	quick bool
}

// allWorkloads lists the workloads in the order they run on one mount: reads first, then changes.
func allWorkloads(cfg config, img *image) []workload {
	fioTime := "4"
	untarName, rmName, members := "untar 20k files", "rm -rf 20k files", []string{}
	if cfg.quick {
		fioTime = "1"
		// A quarter of the tarball (its first 50 of 200 directories), to stay under three minutes.
		untarName, rmName, members = "untar 5k files", "rm -rf 5k files", []string{"--wildcards", "d0[0-4]*"}
	}
	ws := []workload{
		{name: "seq read 1GiB cold", unit: "MB/s", higher: true, run: func(e *env) (float64, error) {
			dropCaches()
			return ddRead(filepath.Join(e.mnt, bigFile))
		}},
		{name: "seq read 1GiB warm", unit: "MB/s", higher: true, run: func(e *env) (float64, error) {
			if _, err := ddRead(filepath.Join(e.mnt, bigFile)); err != nil {
				return 0, err
			}
			return ddRead(filepath.Join(e.mnt, bigFile))
		}},
		{name: "fio randread 4k cold", unit: "MB/s", higher: true, run: func(e *env) (float64, error) {
			dropCaches()
			return fio(filepath.Join(e.mnt, bigFile), "4k", fioTime)
		}},
		{name: "fio randread 4k warm", unit: "MB/s", higher: true, run: func(e *env) (float64, error) {
			ddRead(filepath.Join(e.mnt, bigFile))
			return fio(filepath.Join(e.mnt, bigFile), "4k", fioTime)
		}},
		{name: "fio randread 128k cold", unit: "MB/s", higher: true, run: func(e *env) (float64, error) {
			dropCaches()
			return fio(filepath.Join(e.mnt, bigFile), "128k", fioTime)
		}},
		{name: "fio randread 128k warm", unit: "MB/s", higher: true, run: func(e *env) (float64, error) {
			ddRead(filepath.Join(e.mnt, bigFile))
			return fio(filepath.Join(e.mnt, bigFile), "128k", fioTime)
		}},
		{name: "tar root cold", unit: "s", run: func(e *env) (float64, error) {
			dropCaches()
			return timed("tar -C \"$1\" --exclude=./"+bigFile+" -cf - . | cat > /dev/null", e.mnt)
		}},
		{name: "tar root warm", unit: "s", run: func(e *env) (float64, error) {
			timed("tar -C \"$1\" --exclude=./"+bigFile+" -cf - . | cat > /dev/null", e.mnt)
			return timed("tar -C \"$1\" --exclude=./"+bigFile+" -cf - . | cat > /dev/null", e.mnt)
		}},
		{name: "stat walk warm", unit: "s", run: func(e *env) (float64, error) {
			timed("find \"$1\" -printf '%s %m %u\\n' > /dev/null", e.mnt)
			return timed("find \"$1\" -printf '%s %m %u\\n' > /dev/null", e.mnt)
		}},
		{name: "daemon RSS after walk", unit: "MiB", rss: true, run: func(e *env) (float64, error) {
			timed("find \"$1\" -printf '%s %m %u\\n' > /dev/null", e.mnt)
			kib, err := memKiB(e.pid, "VmHWM")
			return kib / 1024, err
		}},
		{name: "daemon RSS after drop_caches", unit: "MiB", rss: true, run: func(e *env) (float64, error) {
			dropCaches()
			time.Sleep(2 * time.Second) // the kernel sends FORGETs; the daemon frees
			kib, err := memKiB(e.pid, "VmRSS")
			return kib / 1024, err
		}},
		{name: "boot-like chroot", unit: "s", run: func(e *env) (float64, error) {
			// The peers mount nodev: bind the host's /dev, so that every system runs the same commands.
			return timed(`mount --bind /dev "$1/dev" && trap 'umount "$1/dev"' EXIT &&
				chroot "$1" /bin/sh -ec 'i=0; while [ $i -lt 200 ]; do /bin/ls /etc > /dev/null; /bin/sh -c true; dpkg -l > /dev/null; i=$((i+1)); done'`, e.mnt)
		}},
		{name: "copy-up append 2000 files", unit: "s", writes: true, upOnly: true, run: func(e *env) (float64, error) {
			list, err := writeList(e.img.appendSet)
			if err != nil {
				return 0, err
			}
			defer os.Remove(list)
			return timed(`cd "$1" && while IFS= read -r f; do printf x >> "$f"; done < "$2"`, e.mnt, list)
		}},
		{name: "copy-up chmod 1000 files", unit: "s", writes: true, upOnly: true, run: func(e *env) (float64, error) {
			list, err := writeList(e.img.chmodSet)
			if err != nil {
				return 0, err
			}
			defer os.Remove(list)
			return timed(`cd "$1" && xargs -d '\n' chmod 600 < "$2"`, e.mnt, list)
		}},
		{name: "chmod of the 1GiB file", unit: "s", writes: true, upOnly: true, run: func(e *env) (float64, error) {
			return timedNoShell("chmod", "600", filepath.Join(e.mnt, bigFile))
		}},
		{name: "first write to the 1GiB file", unit: "s", writes: true, upOnly: true, run: func(e *env) (float64, error) {
			return timed(`printf x >> "$1/`+bigFile+`"`, e.mnt)
		}},
		{name: untarName, unit: "s", writes: true, run: func(e *env) (float64, error) {
			os.MkdirAll(filepath.Join(e.mnt, "tmp", "untar"), 0755)
			return timed(`d=$1 f=$2; shift 2; tar -C "$d/tmp/untar" -xf "$f" "$@"`, append([]string{e.mnt, e.img.tarball}, members...)...)
		}},
		{name: rmName, unit: "s", writes: true, run: func(e *env) (float64, error) {
			return timed(`rm -rf "$1/tmp/untar"`, e.mnt)
		}},
	}
	if !cfg.quick && len(img.debs) > 0 {
		ws = append(ws, workload{name: "dpkg -i in chroot", unit: "s", writes: true, upOnly: true, run: func(e *env) (float64, error) {
			dir := filepath.Join(e.mnt, "tmp", "debs")
			os.MkdirAll(dir, 0755)
			for _, d := range e.img.debs {
				if _, err := run("cp", d, dir); err != nil {
					return 0, err
				}
			}
			return timed(`mount --bind /dev "$1/dev" && trap 'umount "$1/dev"' EXIT &&
				chroot "$1" /bin/sh -ec 'dpkg -i /tmp/debs/*.deb > /dev/null'`, e.mnt)
		}})
	}
	return ws
}

// timed runs a bash script with arguments and returns its duration in seconds.
func timed(script string, args ...string) (float64, error) {
	start := time.Now()
	out, err := exec.Command("bash", append([]string{"-o", "pipefail", "-c", script, "bench"}, args...)...).CombinedOutput()
	d := time.Since(start).Seconds()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return d, nil
}

// timedNoShell runs a program and returns its duration in seconds.
func timedNoShell(name string, args ...string) (float64, error) {
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	d := time.Since(start).Seconds()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return d, nil
}

// ddRead reads path sequentially in 1 MiB blocks and returns MB/s.
func ddRead(path string) (float64, error) {
	var st os.FileInfo
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	d, err := timedNoShell("dd", "if="+path, "of=/dev/null", "bs=1M")
	if err != nil {
		return 0, err
	}
	return float64(st.Size()) / 1e6 / d, nil
}

// fio runs a random-read job on path for secs seconds with block size bs and returns MB/s.
func fio(path, bs, secs string) (float64, error) {
	out, err := exec.Command("fio", "--name=randread", "--filename="+path, "--rw=randread", "--bs="+bs,
		"--ioengine=psync", "--runtime="+secs, "--time_based", "--invalidate=0", "--output-format=json").Output()
	if err != nil {
		return 0, fmt.Errorf("fio: %v", err)
	}
	var res struct {
		Jobs []struct {
			Read struct {
				BwBytes float64 `json:"bw_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		return 0, fmt.Errorf("fio output: %v", err)
	}
	return res.Jobs[0].Read.BwBytes / 1e6, nil
}

// writeList writes paths, one per line, into a temporary file and returns its name.
func writeList(paths []string) (string, error) {
	f, err := os.CreateTemp("", "bench-list-")
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = f.WriteString(strings.Join(paths, "\n") + "\n")
	return f.Name(), err
}
