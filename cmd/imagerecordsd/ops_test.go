package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// cleanEnv is the test's environment without the gateway's variables,
// plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, gateway.EnvPrefix) && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return append(append(env, "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"), extra...)
}

// runBinary runs bin to its exit, which must come within 30 s.
func runBinary(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if exit, ok := errors.AsType[*exec.ExitError](err); ok {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return o.String(), e.String(), code
}

func TestVersionIsStampedAtBuildTime(t *testing.T) {
	t.Parallel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "imagerecordsd")
	// The flag deploy/build-image.sh stamps the image's binary with.
	build := exec.Command(goBin, "build", "-ldflags", "-X github.com/imagerecords/imagerecords/service/gateway.version=v9.8.7-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	stdout, stderr, code := runBinary(t, bin, cleanEnv(), "--version")
	if code != 0 || stdout != "imagerecordsd v9.8.7-test\n" || stderr != "" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestHelpGoesToStdout(t *testing.T) {
	t.Parallel()
	stdout, stderr, code := runBinary(t, gatewayBinary(t), cleanEnv(), "--help")
	if code != 0 || !strings.HasPrefix(stdout, "Usage: imagerecordsd") || !strings.Contains(stdout, "-drain-delay") || stderr != "" {
		t.Errorf("--help: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	// A bad flag is an error: the usage goes to stderr with it.
	stdout, stderr, code = runBinary(t, gatewayBinary(t), cleanEnv(), "--no-such-flag")
	if code != 2 || stdout != "" || !strings.Contains(stderr, "Usage: imagerecordsd") {
		t.Errorf("a bad flag: exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}
}

// TestOperatorMistakesStopTheBinary: each ends the real binary at once
// with exit 2 and a message naming the value and the fix.
func TestOperatorMistakesStopTheBinary(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--simulate-throttle", "0.3"}, nil, "--simulate-throttle 0.3 only apply with --simulate"},
		{nil, []string{"IMAGERECORDS_UPSTREAM_QSP=5"}, "did you mean IMAGERECORDS_UPSTREAM_QPS?"},
		{nil, []string{"IMAGERECORDS_UPSTREAM_QPS=abc"}, `IMAGERECORDS_UPSTREAM_QPS="abc" is not a valid --upstream-qps; set it to a number`},
		{[]string{"--simulate"}, []string{"OTEL_PROPAGATORS=tracecontext,zipkin"}, `OTEL_PROPAGATORS="tracecontext,zipkin"`},
	}
	for _, tc := range testCases {
		_, stderr, code := runBinary(t, gatewayBinary(t), cleanEnv(tc.env...), tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("args %q env %q: exit %d, stderr %q; want exit 2 and %q", tc.args, tc.env, code, stderr, tc.want)
		}
	}
}

// TestB3CallerContinuesItsTrace: with OTEL_PROPAGATORS=b3, a caller that
// sends B3 headers (as Zipkin-era meshes do) continues its own trace
// instead of starting a new one.
func TestB3CallerContinuesItsTrace(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(gatewayBinary(t), "--simulate", "--listen", "127.0.0.1:0")
	cmd.Env = cleanEnv("OTEL_PROPAGATORS=b3")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var logs gatewaytest.Output
	addrs := make(chan string, 1)
	go func() {
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

	const traceID, spanID = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"
	req := connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: ecdsim.DefaultDesktops(1)[0].ID, PageSize: 1})
	req.Header().Set("b3", traceID+"-"+spanID+"-1")
	client := connect.NewClient[imagerecordsv1.ListImageModifiedRecordsRequest, imagerecordsv1.ListImageModifiedRecordsResponse](
		http.DefaultClient, "http://"+addr+"/ecd.imagerecords.v1.ImageRecordsService/ListImageModifiedRecords")
	if _, err := client.CallUnary(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	logs.WaitFor(t, `"msg":"rpc"`, 10*time.Second)
	if want := `"trace_id":"` + traceID + `"`; !strings.Contains(logs.String(), want) {
		t.Errorf("the access log lacks the caller's B3 trace id %s:\n%s", traceID, logs.String())
	}
}

// TestReadinessWaitsForCredentials runs the real binary as a pod starts it,
// against the real cloud (which no health check calls): with no
// credentials anywhere in the Alibaba Cloud chain, readiness is
// NOT_SERVING and liveness SERVING; with an AccessKey in the environment,
// both are SERVING. The daemon's own wiring of readiness to its
// credentials is what is tested: the gateway tests wire it themselves.
func TestReadinessWaitsForCredentials(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name      string
		env       []string
		wantReady grpchealth.Status
	}{
		{"no credentials", nil, grpchealth.StatusNotServing},
		{"an AccessKey in the environment", []string{"ALIBABA_CLOUD_ACCESS_KEY_ID=" + gatewaytest.KeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + gatewaytest.KeySecret}, grpchealth.StatusServing},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Nothing of the machine's: no credentials variables, and a
			// home without credential or CLI profile files.
			var env []string
			for _, kv := range cleanEnv() {
				if !strings.HasPrefix(kv, "ALIBABA_CLOUD_") && !strings.HasPrefix(kv, "ALICLOUD_") && !strings.HasPrefix(kv, "HOME=") {
					env = append(env, kv)
				}
			}
			env = append(env, "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true", "HOME="+t.TempDir())
			d := startDaemonEnv(t, append(env, tc.env...), "--listen", "127.0.0.1:0")
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			health := grpchealth.NewClient(gatewaytest.H2C(), "http://"+d.addr, connect.WithGRPC())
			for service, want := range map[string]grpchealth.Status{gateway.LivenessService: grpchealth.StatusServing, gateway.ReadinessService: tc.wantReady} {
				res, err := health.Check(ctx, &grpchealth.CheckRequest{Service: service})
				if err != nil {
					t.Fatalf("health check of %q: %v\n%s", service, err, d.logs.String())
				}
				if res.Status != want {
					t.Errorf("health of %q: %v, want %v\n%s", service, res.Status, want, d.logs.String())
				}
			}
		})
	}
}
