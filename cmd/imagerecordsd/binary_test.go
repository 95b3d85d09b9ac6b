package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
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
		if !strings.HasPrefix(kv, gateway.EnvPrefix) {
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
	var logs gatewaytest.Output
	addrs := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.Write(append(sc.Bytes(), '\n'))
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				addrs <- line.Addr
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrs:
	case <-time.After(30 * time.Second):
		t.Fatalf("the gateway did not start:\n%s", logs.String())
	}

	desktop := ecdsim.DefaultDesktops(1)[0] // 1234 records: 13 pages of 20 ms
	stream, err := gatewaytest.ClientOf(addr, connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: desktop.ID,
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
	// Read the logs to their end before Wait, which closes the pipe.
	<-scanned
	if err := cmd.Wait(); err != nil {
		t.Errorf("the gateway exited with %v, want 0\n%s", err, logs.String())
	}
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

// TestExitCodes runs the binary with command lines that end at once: -h
// exits 0, a bad flag or variable exits 2 with a message naming it.
func TestExitCodes(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		args    []string
		env     string
		code    int
		message string
	}{
		{args: []string{"-h"}, code: 0, message: "Usage: imagerecordsd"},
		{args: []string{"--no-such-flag"}, code: 2, message: "no-such-flag"},
		{args: []string{"--signature", "v2"}, code: 2, message: "neither v3 nor v1"},
		{env: "IMAGERECORDS_UPSTREAM_QPS=lots", code: 2, message: "IMAGERECORDS_UPSTREAM_QPS"},
	}
	for _, tc := range testCases {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // a wrong exit path would serve forever
		cmd := exec.CommandContext(ctx, gatewayBinary(t), tc.args...)
		cmd.Env = append(os.Environ(), "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true")
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.CombinedOutput()
		cancel()
		code := 0
		if exit, ok := errors.AsType[*exec.ExitError](err); ok {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if code != tc.code || !strings.Contains(string(out), tc.message) {
			t.Errorf("args %q env %q: exit %d with %q; want exit %d and a message with %q", tc.args, tc.env, code, out, tc.code, tc.message)
		}
	}
}
