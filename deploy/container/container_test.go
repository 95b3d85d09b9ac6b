//go:build container

// Package container_test runs the imagerecordsd container image as a
// platform would: it checks the image's user, settings and files, starts it
// with a read-only root filesystem and no capabilities, asks its health,
// streams every record of a desktop from it, and stops it with SIGTERM.
// It needs a built image and podman or docker:
//
//	IMAGE="$(deploy/build-image.sh)" go test -tags container -v ./deploy/container
//
// CONTAINER_ENGINE picks the engine (default podman, else docker).
package container_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"slices"
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

// commandTimeout bounds every engine command (a pull is never needed:
// the image is local).
const commandTimeout = 2 * time.Minute

func engine(t *testing.T) string {
	t.Helper()
	if e := os.Getenv("CONTAINER_ENGINE"); e != "" {
		return e
	}
	for _, e := range []string{"podman", "docker"} {
		if _, err := exec.LookPath(e); err == nil {
			return e
		}
	}
	t.Fatal("neither podman nor docker is installed")
	return ""
}

func image(t *testing.T) string {
	t.Helper()
	img := os.Getenv("IMAGE")
	if img == "" {
		t.Fatal(`IMAGE is not set: build the image with IMAGE="$(deploy/build-image.sh)" first`)
	}
	return img
}

// run runs the engine with args and returns its stdout.
func run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, engine(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", engine(t), strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func TestImageSettings(t *testing.T) {
	var cfg struct {
		User       string
		Env        []string
		Entrypoint []string
	}
	if err := json.Unmarshal([]byte(run(t, "image", "inspect", "--format", "{{json .Config}}", image(t))), &cfg); err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: user %s, entrypoint %v, env %v", image(t), cfg.User, cfg.Entrypoint, cfg.Env)
	if cfg.User != "65532:65532" {
		t.Errorf("image user %q, want 65532:65532 (non-root)", cfg.User)
	}
	for _, want := range []string{"IMAGERECORDS_LISTEN=0.0.0.0:8080", "IMAGERECORDS_ADMIN_LISTEN=0.0.0.0:9464"} {
		if !slices.Contains(cfg.Env, want) {
			t.Errorf("image env %v lacks %s", cfg.Env, want)
		}
	}
	version := run(t, "run", "--rm", image(t), "--version")
	t.Logf("--version: %s", version)
	if !strings.HasPrefix(version, "imagerecordsd ") || strings.HasSuffix(version, " dev") {
		t.Errorf("--version printed %q, want a stamped version", version)
	}
}

// TestImageContents reads the image's files (the engine's export of a
// container created from it, never started): a static binary, a CA
// bundle where Go looks for one (https to ECD and STS needs it; the
// simulator tests would pass without it), and the passwd entry of the
// non-root user. It logs the image's file list.
func TestImageContents(t *testing.T) {
	id := run(t, "create", "--label", "imagerecords.container-test=1", image(t))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		_ = exec.CommandContext(ctx, engine(t), "rm", "--force", id).Run()
	})
	ctx, cancel := context.WithTimeout(t.Context(), commandTimeout)
	defer cancel()
	export := exec.CommandContext(ctx, engine(t), "export", id)
	var stderr strings.Builder
	export.Stderr = &stderr
	out, err := export.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := export.Start(); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	var listing []string
	tr := tar.NewReader(out)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the export: %v", err)
		}
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		listing = append(listing, fmt.Sprintf("%s %s %d", os.FileMode(hdr.Mode).Perm(), name, hdr.Size))
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	if err := export.Wait(); err != nil {
		t.Fatalf("%s export: %v\n%s", engine(t), err, stderr.String())
	}
	t.Logf("files of %s:\n%s", image(t), strings.Join(listing, "\n"))

	bin, err := elf.NewFile(bytes.NewReader(files["usr/local/bin/imagerecordsd"]))
	if err != nil {
		t.Fatalf("usr/local/bin/imagerecordsd is no ELF binary: %v", err)
	}
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("usr/local/bin/imagerecordsd is dynamically linked (%v): it cannot run FROM scratch", p.Type)
		}
	}
	pool := x509.NewCertPool()
	bundle := files["etc/ssl/certs/ca-certificates.crt"]
	if n := bytes.Count(bundle, []byte("-----BEGIN CERTIFICATE-----")); n < 10 || !pool.AppendCertsFromPEM(bundle) {
		t.Errorf("etc/ssl/certs/ca-certificates.crt holds %d certificates, want a CA bundle", n)
	}
	if !slices.ContainsFunc(strings.Split(string(files["etc/passwd"]), "\n"), func(l string) bool {
		f := strings.Split(l, ":")
		return len(f) == 7 && f[2] == "65532" && f[3] == "65532"
	}) {
		t.Errorf("etc/passwd has no entry of uid 65532:\n%s", files["etc/passwd"])
	}
}

func TestImageServesAndDrains(t *testing.T) {
	id := run(t, "run", "--detach",
		"--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"--label", "imagerecords.container-test=1",
		"--publish", "127.0.0.1::8080", "--publish", "127.0.0.1::9464",
		image(t), "--simulate")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		_ = exec.CommandContext(ctx, engine(t), "rm", "--force", id).Run()
	})
	api := hostAddr(run(t, "port", id, "8080/tcp"))
	admin := hostAddr(run(t, "port", id, "9464/tcp"))

	var logs gatewaytest.Output
	follow := exec.Command(engine(t), "logs", "--follow", id)
	follow.Stdout, follow.Stderr = &logs, &logs
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = follow.Process.Kill(); _ = follow.Wait() })
	logs.WaitFor(t, `"msg":"serving"`, 60*time.Second)
	t.Logf("container %.12s serves the API on %s and admin on %s", id, api, admin)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	health := grpchealth.NewClient(gatewaytest.H2C(), "http://"+api, connect.WithGRPC())
	for _, service := range []string{gateway.LivenessService, gateway.ReadinessService} {
		res, err := health.Check(ctx, &grpchealth.CheckRequest{Service: service})
		if err != nil {
			t.Fatalf("health check of %q: %v", service, err)
		}
		t.Logf("grpc.health.v1.Health/Check {service: %q} -> %v", service, res.Status)
		if res.Status != grpchealth.StatusServing {
			t.Errorf("health of %q: %v, want SERVING", service, res.Status)
		}
	}

	desktop := ecdsim.DefaultDesktops(1)[0] // the seed the image's simulator uses by default
	stream, err := gatewaytest.ClientOf(api, connect.WithGRPC()).StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: desktop.ID,
	}))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := gatewaytest.Drain(stream)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	records := gatewaytest.RecordsOf(msgs)
	var sizes []string
	for _, m := range msgs {
		sizes = append(sizes, fmt.Sprint(len(m.GetRecords())))
	}
	t.Logf("StreamImageModifiedRecords %s over gRPC: %d messages (%s records), %d records in all; first %s -> %s at %s, last resume_token %q",
		desktop.ID, len(msgs), strings.Join(sizes, "+"), len(records),
		records[0].GetImageId(), records[0].GetNewImageId(), records[0].GetUpdateTime().AsTime().Format(time.RFC3339), msgs[len(msgs)-1].GetResumeToken())
	if len(records) != desktop.Records || len(msgs) != 13 {
		t.Errorf("%d records in %d messages, want %d in 13", len(records), len(msgs), desktop.Records)
	}

	for path, want := range map[string]string{"/livez": "ok", "/readyz": "ok", "/metrics": "go_goroutines"} {
		body := get(t, "http://"+admin+path)
		if !strings.Contains(body, want) {
			t.Errorf("admin %s lacks %q", path, want)
		}
	}

	t.Logf("%s stop --time 30 %.12s", engine(t), id)
	run(t, "stop", "--time", "30", id)
	exit := run(t, "inspect", "--format", "{{.State.ExitCode}}", id)
	if exit != "0" {
		t.Errorf("exit code %s after SIGTERM, want 0\n%s", exit, logs.String())
	}
	logs.WaitFor(t, `"msg":"stopped"`, 30*time.Second)
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"msg":"draining`) || strings.Contains(l, `"msg":"stopped"`) || strings.Contains(l, `"msg":"serving"`) {
			t.Logf("log: %s", l)
		}
	}
}

// hostAddr turns the engine's "port" answer (one line per address, e.g.
// 127.0.0.1:43785) into host:port.
func hostAddr(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}

func get(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(bufio.NewReader(res.Body))
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d %v", url, res.StatusCode, err)
	}
	return string(b)
}
