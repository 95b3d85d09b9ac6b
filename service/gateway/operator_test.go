package gateway_test

import (
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
)

func TestOperatorMistakesAreRefusedWithTheFix(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		args []string
		env  []string
		want []string // every one must be in the message
	}{
		{"simulator fault without --simulate", []string{"--simulate-throttle", "0.5"}, nil,
			[]string{"--simulate-throttle 0.5", "add --simulate"}},
		{"simulator latency without --simulate", nil, []string{"IMAGERECORDS_SIMULATE_LATENCY=20ms"},
			[]string{"--simulate-latency 20ms", "real ECD endpoint"}},
		{"fraction above 1", []string{"--simulate", "--simulate-server-errors", "1.5"}, nil,
			[]string{"--simulate-server-errors 1.5", "from 0 to 1"}},
		{"negative attempt timeout", []string{"--upstream-attempt-timeout", "-1s"}, nil,
			[]string{"--upstream-attempt-timeout -1s", "10s"}},
		{"negative compression size", []string{"--compress-min-bytes", "-5"}, nil,
			[]string{"--compress-min-bytes -5", "0 (never compress)"}},
		{"negative drain delay", []string{"--drain-delay", "-1s"}, nil,
			[]string{"--drain-delay -1s", "5s"}},
		{"misspelt variable", nil, []string{"IMAGERECORDS_UPSTREAM_QSP=5"},
			[]string{"IMAGERECORDS_UPSTREAM_QSP", "did you mean IMAGERECORDS_UPSTREAM_QPS?"}},
		{"variable of no flag at all", nil, []string{"IMAGERECORDS_COLOUR=blue"},
			[]string{"IMAGERECORDS_COLOUR is set", "no flag --colour"}},
		{"number that is not one", nil, []string{"IMAGERECORDS_UPSTREAM_QPS=abc"},
			[]string{`IMAGERECORDS_UPSTREAM_QPS="abc"`, "--upstream-qps", "a number (the default is 100)"}},
		{"duration without a unit", nil, []string{"IMAGERECORDS_SHUTDOWN_GRACE=15"},
			[]string{`IMAGERECORDS_SHUTDOWN_GRACE="15"`, "a duration such as"}},
		{"bad value of a custom flag", nil, []string{"IMAGERECORDS_SIGNATURE=v2"},
			[]string{`IMAGERECORDS_SIGNATURE="v2"`, "neither v3 nor v1"}},
	}
	for _, tc := range testCases {
		_, err := gateway.ParseEnviron(tc.args, tc.env, io.Discard)
		if _, ok := errors.AsType[*gateway.UsageError](err); !ok {
			t.Errorf("%s: %v, want a UsageError", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", tc.name, err, w)
			}
		}
	}
}

func TestEnvironmentThatIsFine(t *testing.T) {
	t.Parallel()
	env := []string{
		"IMAGERECORDS_LISTEN=0.0.0.0:8080",
		"IMAGERECORDS_DRAIN_DELAY=5s",
		// What Kubernetes puts into every pod for a Service named
		// imagerecords (with enableServiceLinks left on).
		"IMAGERECORDS_SERVICE_HOST=10.96.0.12",
		"IMAGERECORDS_SERVICE_PORT=8080",
		"IMAGERECORDS_SERVICE_PORT_GRPC=8080",
		"IMAGERECORDS_PORT=tcp://10.96.0.12:8080",
		"IMAGERECORDS_PORT_8080_TCP=tcp://10.96.0.12:8080",
		"IMAGERECORDS_PORT_8080_TCP_PROTO=tcp",
		"IMAGERECORDS_PORT_8080_TCP_PORT=8080",
		"IMAGERECORDS_PORT_8080_TCP_ADDR=10.96.0.12",
		"IMAGERECORDSD=/usr/local/bin/imagerecordsd", // another prefix
		"PATH=/usr/bin",
	}
	cfg, err := gateway.ParseEnviron([]string{"--simulate"}, env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "0.0.0.0:8080" || cfg.DrainDelay.String() != "5s" {
		t.Errorf("listen %q, drain delay %v", cfg.Listen, cfg.DrainDelay)
	}
}

func TestMetricsFollowPrometheusConventions(t *testing.T) {
	t.Parallel()
	run := gatewaytest.Run(t, "--simulate", "--admin-listen", "127.0.0.1:0")
	url := "http://" + run.Addrs.Admin + "/metrics"
	body := get(t, url) // before any call

	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes", "process_open_fds"} {
		if _, ok := sample(body, name, nil); !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if strings.Contains(body, "otel_scope_") {
		t.Error("/metrics carries otel_scope_* labels")
	}
	zeros := []struct {
		name   string
		labels map[string]string
	}{
		{"imagerecords_upstream_calls_total", map[string]string{"outcome": "ok"}},
		{"imagerecords_upstream_retries_total", nil},
		{"imagerecords_upstream_throttles_total", nil},
		{"imagerecords_upstream_retry_budget_exhausted_total", nil},
		{"imagerecords_records_total", map[string]string{"rpc_method": "ListImageModifiedRecords"}},
		{"imagerecords_records_total", map[string]string{"rpc_method": "StreamImageModifiedRecords"}},
		{"imagerecords_pages_total", map[string]string{"rpc_method": "StreamImageModifiedRecords"}},
		{"imagerecords_streams_active", nil},
	}
	for _, z := range zeros {
		if v, ok := sample(body, z.name, z.labels); !ok || v != 0 {
			t.Errorf("before any call %s%v = %v (found: %v), want 0", z.name, z.labels, v, ok)
		}
	}
	instance := regexp.MustCompile(`target_info\{[^}]*service_instance_id="([0-9a-f-]{36})"`).FindStringSubmatch(body)
	if instance == nil {
		t.Errorf("target_info has no service_instance_id:\n%s", grepLines(body, "target_info"))
	}

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	om, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(string(om), "# EOF\n") {
		t.Errorf("asked for OpenMetrics, got %s ending %q", ct, tail(string(om), 20))
	}
}

func grepLines(body, s string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }
