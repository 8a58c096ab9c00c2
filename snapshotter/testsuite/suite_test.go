// containerd's snapshotter test suite (core/snapshots/testsuite) run through containerd's own
// proxy snapshotter client against a running `damselfly snapshotter` socket:
//
//	SNAPSHOTTER_SOCKET=/run/damselfly/snapshotter.sock go test -v -test.parallel=1 .
//
// The suite expects a fresh snapshotter per test; the daemon is one shared instance, so tests run
// one at a time and every snapshot is removed before and after each test.
package testsuite

import (
	"context"
	"fmt"
	"os"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// removeAll deletes every snapshot of the namespace, children before their parents.
func removeAll(ctx context.Context, sn snapshots.Snapshotter) error {
	for pass := 0; pass < 300; pass++ {
		var infos []snapshots.Info
		isParent := map[string]bool{}
		err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			infos = append(infos, i)
			isParent[i.Parent] = true
			return nil
		})
		if errdefs.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(infos) == 0 {
			return nil
		}
		for _, i := range infos {
			if isParent[i.Name] {
				continue
			}
			if err := sn.Remove(ctx, i.Name); err != nil {
				return fmt.Errorf("remove %q: %w", i.Name, err)
			}
		}
	}
	return fmt.Errorf("snapshots still left after 300 passes")
}

func TestDamselflySnapshotter(t *testing.T) {
	sock := os.Getenv("SNAPSHOTTER_SOCKET")
	if sock == "" {
		if os.Getenv("DAMSELFLY_REQUIRE_LAB") == "1" {
			t.Fatal("SNAPSHOTTER_SOCKET not set")
		}
		t.Skip("SNAPSHOTTER_SOCKET not set")
	}
	// "overlayfs": the suite then skips the directory-rename check that overlayfs lower layers fail.
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, _ string) (snapshots.Snapshotter, func() error, error) {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "damselfly")
		if err := removeAll(ctx, sn); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("removing snapshots before the test: %w", err)
		}
		return sn, func() error {
			rerr := removeAll(ctx, sn)
			if cerr := conn.Close(); rerr == nil {
				rerr = cerr
			}
			return rerr
		}, nil
	})
}
