//go:build nginx

// Package nginx_test puts Debian's nginx in front of a gateway, standing
// in for a mesh sidecar or an L7 load balancer: gRPC through grpc_pass
// (h2c to the gateway), Connect JSON through proxy_pass (HTTP/1.1). It
// checks that what a caller relies on passes through: unary and streaming
// calls, errors with their google.rpc details, deadlines, cancellation
// and health checks. It needs the nginx binary (apt-get install nginx):
//
//	go test -tags nginx -v ./deploy/nginx
//
// NGINX names another binary.
package nginx_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// config is nginx's configuration: one server for gRPC (HTTP/2 without
// TLS, as a sidecar speaks it, passed on with grpc_pass) and one for
// Connect and gRPC-Web over HTTP/1.1 (proxy_pass). Both listen on Unix
// sockets in the test's folder, so no port can be taken by another
// process. Streams can be quiet for long (a slow upstream, a slow
// reader): the read and send timeouts must exceed the longest gap.
const config = `daemon off;
master_process off;
pid {{.Dir}}/nginx.pid;
error_log stderr notice;
events { worker_connections 256; }
http {
	access_log off;
	client_body_temp_path {{.Dir}}/body;
	proxy_temp_path {{.Dir}}/proxy;
	fastcgi_temp_path {{.Dir}}/fastcgi;
	uwsgi_temp_path {{.Dir}}/uwsgi;
	scgi_temp_path {{.Dir}}/scgi;

	# One pool per protocol: nginx would hand an idle HTTP/2 connection
	# of grpc_pass to proxy_pass (HTTP/1.1) and the other way round.
	upstream imagerecords_grpc {
		server {{.Gateway}};
		keepalive 16;
	}
	upstream imagerecords_http {
		server {{.Gateway}};
		keepalive 16;
	}
	server {
		listen unix:{{.Dir}}/grpc.sock http2;
		location / {
			grpc_pass grpc://imagerecords_grpc;
			grpc_read_timeout 1h;
			grpc_send_timeout 1h;
		}
	}
	server {
		listen unix:{{.Dir}}/http.sock;
		location / {
			proxy_pass http://imagerecords_http;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_buffering off;
			proxy_read_timeout 1h;
		}
	}
}
`

const (
	bigDesktop   = "ecd-big0000000001234"
	smallDesktop = "ecd-small00000000042"
	// stalledDesktop's upstream calls never answer: they end when the
	// gateway cancels them.
	stalledDesktop = "ecd-stalled000000010"
)

// proxy is a gateway with nginx in front.
type proxy struct {
	stack *gatewaytest.Stack
	grpc  *http.Client // h2c to nginx's gRPC server
	http1 *http.Client // HTTP/1.1 to nginx's proxy_pass server
	// arrived sees the headers of every request that reached the gateway
	// through nginx.
	arrived chan http.Header
	// ended is signalled when a request of the gateway's handler ends.
	ended chan string
}

func nginxBinary() string {
	if b := os.Getenv("NGINX"); b != "" {
		return b
	}
	return "nginx"
}

func startProxy(t *testing.T) *proxy {
	t.Helper()
	p := &proxy{arrived: make(chan http.Header, 100), ended: make(chan string, 100)}
	p.stack = gatewaytest.New(t, gatewaytest.Config{
		Desktops: []ecdsim.Desktop{{ID: bigDesktop, Records: 1234}, {ID: smallDesktop, Records: 42}, {ID: stalledDesktop, Records: 10}},
		WrapSimulator: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Query().Get("DesktopId") == stalledDesktop {
					<-r.Context().Done()
					return
				}
				next.ServeHTTP(w, r)
			})
		},
		WrapHandler: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case p.arrived <- r.Header.Clone():
				default:
				}
				defer func() {
					select {
					case p.ended <- r.URL.Path:
					default:
					}
				}()
				next.ServeHTTP(w, r)
			})
		},
	})

	dir := t.TempDir()
	var conf bytes.Buffer
	if err := template.Must(template.New("nginx").Parse(config)).Execute(&conf, map[string]string{
		"Dir": dir, "Gateway": strings.TrimPrefix(p.stack.URL, "http://"),
	}); err != nil {
		t.Fatal(err)
	}
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, conf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs gatewaytest.Output
	cmd := exec.Command(nginxBinary(), "-c", confFile, "-p", dir+"/", "-e", "stderr")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nginx (apt-get install nginx, or set NGINX): %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt) // fast shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("nginx:\n%s", logs.String())
		}
	})
	// nginx reports its limits once it has bound its sockets; a
	// connection made from then on waits in the backlog.
	logs.WaitFor(t, "getrlimit(RLIMIT_NOFILE)", 30*time.Second)
	t.Logf("nginx is up: %s", firstLine(logs.String(), "nginx/"))

	unix := func(sock string) func(ctx context.Context, _, _ string) (net.Conn, error) {
		return func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", filepath.Join(dir, sock))
		}
	}
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	p.grpc = &http.Client{Transport: &http.Transport{Protocols: &h2c, DialContext: unix("grpc.sock")}}
	p.http1 = &http.Client{Transport: &http.Transport{DialContext: unix("http.sock")}}
	t.Cleanup(p.grpc.CloseIdleConnections)
	t.Cleanup(p.http1.CloseIdleConnections)
	return p
}

func firstLine(s, containing string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, containing) {
			return l
		}
	}
	return ""
}

// client is an ImageRecordsService client of nginx: gRPC through
// grpc_pass, or Connect JSON through proxy_pass.
func (p *proxy) client(protocol string) imagerecordsv1connect.ImageRecordsServiceClient {
	if protocol == "grpc" {
		return imagerecordsv1connect.NewImageRecordsServiceClient(p.grpc, "http://nginx", connect.WithGRPC())
	}
	return imagerecordsv1connect.NewImageRecordsServiceClient(p.http1, "http://nginx", connect.WithProtoJSON())
}

func TestThroughNginx(t *testing.T) {
	p := startProxy(t)
	for _, protocol := range []string{"grpc", "connect+json"} {
		c := p.client(protocol)
		t.Run(protocol+": unary", func(t *testing.T) {
			res, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageSize: 5,
			}))
			if err != nil {
				t.Fatal(err)
			}
			p.stack.CheckRecords(t, bigDesktop, 0, res.Msg.GetRecords())
			if len(res.Msg.GetRecords()) != 5 || res.Msg.GetTotalCount() != 1234 || res.Msg.GetNextPageToken() == "" {
				t.Errorf("List through nginx: %d records, total %d, next %q", len(res.Msg.GetRecords()), res.Msg.GetTotalCount(), res.Msg.GetNextPageToken())
			}
		})
		t.Run(protocol+": stream", func(t *testing.T) {
			msgs, err := gatewaytest.Stream(t.Context(), c, &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop})
			if err != nil {
				t.Fatal(err)
			}
			records := gatewaytest.RecordsOf(msgs)
			p.stack.CheckRecords(t, bigDesktop, 0, records)
			t.Logf("StreamImageModifiedRecords through nginx (%s): %d messages, %d records", protocol, len(msgs), len(records))
			if len(records) != 1234 || len(msgs) != 13 {
				t.Errorf("%d records in %d messages, want 1234 in 13", len(records), len(msgs))
			}
		})
		t.Run(protocol+": errors keep their details", func(t *testing.T) {
			_, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: "ecd-nosuchdesktop1",
			}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Fatalf("an unknown desktop: %v, want NotFound", err)
			}
			if info := gatewaytest.ErrorInfo(t, err); info.GetReason() != "InvalidDesktopId.NotFound" || info.GetMetadata()["upstream_request_id"] == "" {
				t.Errorf("ErrorInfo through nginx: %v", info)
			}
			_, err = c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageSize: 101,
			}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("page_size 101: %v, want InvalidArgument", err)
			}
			gatewaytest.CheckFieldViolation(t, err, "page_size")
		})
	}

	t.Run("grpc: health", func(t *testing.T) {
		health := grpchealth.NewClient(p.grpc, "http://nginx", connect.WithGRPC())
		for _, service := range []string{gateway.LivenessService, gateway.ReadinessService} {
			res, err := health.Check(t.Context(), &grpchealth.CheckRequest{Service: service})
			if err != nil || res.Status != grpchealth.StatusServing {
				t.Errorf("health of %q through nginx: %v %v", service, res, err)
			}
		}
	})

	t.Run("grpc: the deadline reaches the gateway", func(t *testing.T) {
		drain(p.arrived)
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		_, err := p.client("grpc").ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
			RegionId: gatewaytest.Region, DesktopId: stalledDesktop,
		}))
		if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
			t.Errorf("a call past its deadline: %v, want DeadlineExceeded", err)
		}
		select {
		case h := <-p.arrived:
			if h.Get("Grpc-Timeout") == "" {
				t.Errorf("the call reached the gateway without grpc-timeout: %v", h)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the call never reached the gateway")
		}
	})

	t.Run("grpc: cancellation reaches the gateway", func(t *testing.T) {
		drain(p.arrived)
		drain(p.ended)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		// The call waits for the response headers, which the stalled
		// stream never sends: it runs aside while the test cancels it.
		received := make(chan error, 1)
		go func() {
			stream, err := p.client("grpc").StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: stalledDesktop,
			}))
			if err == nil {
				if stream.Receive() {
					err = errors.New("a message arrived")
				} else {
					err = stream.Err()
				}
				_ = stream.Close()
			}
			received <- err
		}()
		select {
		case <-p.arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the stream never reached the gateway")
		}
		// The gateway's handler waits on the stalled upstream: only the
		// caller's cancellation, passed on by nginx, can end it.
		cancel()
		start := time.Now()
		timeout := time.After(10 * time.Second)
		for path := ""; !strings.HasSuffix(path, "/StreamImageModifiedRecords"); {
			select {
			case path = <-p.ended:
			case <-timeout:
				t.Fatal("the gateway's stream did not end within 10 s of the caller's cancellation")
			}
		}
		t.Logf("the gateway ended the stream %v after the caller cancelled", time.Since(start))
		if err := <-received; connect.CodeOf(err) != connect.CodeCanceled {
			t.Errorf("the cancelled stream: %v, want Canceled", err)
		}
	})

	t.Run("connect+json: plain HTTP JSON, as curl sends it", func(t *testing.T) {
		body := `{"regionId":"cn-hangzhou","desktopId":"` + smallDesktop + `","pageSize":3}`
		res, err := p.http1.Post("http://nginx/ecd.imagerecords.v1.ImageRecordsService/ListImageModifiedRecords", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Records    []json.RawMessage `json:"records"`
			TotalCount int               `json:"totalCount"`
		}
		if res.StatusCode != http.StatusOK || json.Unmarshal(b, &page) != nil || len(page.Records) != 3 || page.TotalCount != 42 {
			t.Errorf("POST JSON through proxy_pass: HTTP %d %s", res.StatusCode, b)
		}
	})
}

// drain empties ch of what earlier subtests left in it.
func drain[T any](ch chan T) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
