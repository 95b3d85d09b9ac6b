package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// gatewayBinary builds imagerecordsd once per test run.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "imagerecordsd-test")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "imagerecordsd")
		out, err := exec.Command(goBin, "build", "-o", binaryPath, ".").CombinedOutput()
		if err != nil {
			binaryErr = &buildError{out: string(out), err: err}
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + e.out }

// TestSIGTERMDrainsTheRealBinary sends SIGTERM to the gateway process while
// a stream is in flight: the stream finishes with every record and the
// process exits 0.
func TestSIGTERMDrainsTheRealBinary(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(gatewayBinary(t), "--simulate", "--simulate-latency", "20ms", "--listen", "127.0.0.1:0", "--shutdown-grace", "30s")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var logs syncBuffer
	addr := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				addr <- line.Addr
			}
		}
	}()
	var gateway string
	select {
	case gateway = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatalf("the gateway did not start:\n%s", logs.String())
	}

	desktop := ecdsim.DefaultDesktops(1)[0] // 1234 records: 13 pages of 20 ms
	stream, err := newClient(gateway, connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: testRegion, DesktopId: desktop.ID,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	got := len(stream.Msg().GetRecords())
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for stream.Receive() {
		got += len(stream.Msg().GetRecords())
	}
	if err := stream.Err(); err != nil || got != desktop.Records {
		t.Errorf("the stream in flight at SIGTERM: %d records, %v; want all %d", got, err, desktop.Records)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("the gateway exited with %v, want 0\n%s", err, logs.String())
	}
	<-scanned
	for _, msg := range []string{`"msg":"shutting down: draining in-flight requests"`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("logs lack %s:\n%s", msg, logs.String())
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binaryPath != "" {
		_ = os.RemoveAll(filepath.Dir(binaryPath))
	}
	os.Exit(code)
}
