package unionfs

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ltsp/ltsp-unionfs/fstest"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestFsx runs fstest.Fsx on a file that starts in the lower layer (so its first write copies it up) with each
// open-mode policy: by size (the default; the file crosses the passthrough threshold as it grows and shrinks),
// passthrough for every open, and no passthrough. The source of copy_file_range is a lower file too. Afterwards
// a fresh daemon must read the same bytes. LTSP_UNIONFS_FSX_OPS sets the operations per run (default 3000).
func TestFsx(t *testing.T) {
	nops := envInt("LTSP_UNIONFS_FSX_OPS", 3000)
	for _, mode := range []string{"by-size", "passthrough", "cached"} {
		t.Run(mode, func(t *testing.T) {
			u := newTestUnion(t, 1)
			switch mode {
			case "passthrough":
				u.cfg.Passthrough, u.cfg.PassthroughMinSize = true, 0
			case "cached":
				u.cfg.Passthrough = false
			}
			r := rand.New(rand.NewSource(7))
			data, src := make([]byte, 1500<<10), make([]byte, 300<<10)
			r.Read(data)
			r.Read(src)
			testutil.WriteFile(t, filepath.Join(u.Lower(0), "f"), data, 0644)
			testutil.WriteFile(t, filepath.Join(u.Lower(0), "src"), src, 0644)
			mnt := u.Mount(t)
			var res fstest.FsxResult // from another process: see client_test.go
			runClient(t, "fsx", fsxArgs{Path: filepath.Join(mnt, "f"), WantFrom: filepath.Join(u.Lower(0), "f"),
				Src: filepath.Join(mnt, "src"), SrcFrom: filepath.Join(u.Lower(0), "src"),
				Cfg: fstest.FsxConfig{Seed: 1, Ops: nops, MaxSize: 3 << 20}}, &res)
			if res.Failure != "" {
				t.Fatalf("%s\nlast operations:\n%s", res.Failure, strings.Join(res.Log, "\n"))
			}
			want, _ := os.ReadFile(filepath.Join(mnt, "f"))
			st := u.root.Stats()
			t.Logf("%d operations %v; opens: %d passthrough, %d cached", nops, res.Counts, st.PassthroughOpens,
				st.CachedOpens)
			u.Unmount(t)
			mnt = u.Mount(t)
			if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, want) {
				t.Errorf("a fresh daemon reads other bytes (%d, %v; want %d)", len(got), err, len(want))
			}
			if got, _ := os.ReadFile(filepath.Join(u.Lower(0), "f")); !bytes.Equal(got, data) {
				t.Error("the lower file changed")
			}
		})
	}
}
