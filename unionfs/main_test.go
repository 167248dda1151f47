package unionfs

import (
	"os"
	"testing"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// fixtureDir is a rich read-only tree (see testutil.BuildFixture) that many tests use as a lower layer. TestMain
// snapshots it before the tests and compares after them all: the union must never change a lower layer, not its
// content, modes, owners, xattrs, mtimes, ctimes or even atimes.
var fixtureDir string

func TestMain(m *testing.M) {
	if name := os.Getenv(clientEnv); name != "" {
		os.Exit(clientMain(name))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	return testutil.RunPackage(m, "unionfs", func(_, fixture string) error {
		fixtureDir = fixture
		return nil
	})
}
