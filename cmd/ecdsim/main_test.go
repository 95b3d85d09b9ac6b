package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

const (
	testKeyID  = "LTAIcmdtest"
	testSecret = "cmd-secret"
)

// server is a running ecdsim started by startRun.
type server struct {
	addr   string
	banner []string
}

// startRun runs the command with args (plus a port-0 listener and the test
// key) and reads its banner up to the desktops lines, of which it expects
// desktops. The command stops when the test ends.
func startRun(t *testing.T, desktops int, args ...string) server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1:0", "--access-key-id", testKeyID, "--access-key-secret", testSecret}, args...), pw, io.Discard)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		go func() {
			for range lines { // drain
			}
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("run did not return 30 s after its context was cancelled")
		}
	})

	var s server
	inDesktops := -1
	for line := range lines {
		s.banner = append(s.banner, line)
		if a, ok := strings.CutPrefix(line, "ecdsim listening on "); ok {
			s.addr = a
		}
		if line == "desktops:" {
			inDesktops = 0
		} else if inDesktops >= 0 {
			inDesktops++
		}
		if inDesktops == desktops {
			break
		}
	}
	if s.addr == "" || inDesktops != desktops {
		t.Fatalf("banner:\n%s", strings.Join(s.banner, "\n"))
	}
	return s
}

var nonces atomic.Int64

// get sends a V1-signed GET for region and desktop, with extra parameters
// as name, value pairs.
func (s server) get(t *testing.T, region, desktop string, extra ...string) (*http.Response, []byte) {
	t.Helper()
	params := url.Values{
		"RegionId": {region}, "DesktopId": {desktop},
		"Format": {"JSON"}, "AccessKeyId": {testKeyID}, "SignatureMethod": {"HMAC-SHA1"},
		"SignatureVersion": {"1.0"}, "SignatureNonce": {"n" + strconv.FormatInt(nonces.Add(1), 10)},
		"Action": {"DescribeImageModifiedRecords"}, "Version": {"2020-09-30"},
		"Timestamp": {time.Now().UTC().Format("2006-01-02T15:04:05Z")},
	}
	for i := 0; i+1 < len(extra); i += 2 {
		params.Set(extra[i], extra[i+1])
	}
	params.Set("Signature", acs.V1Signature(testSecret, http.MethodGet, params))
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(s.addr + "/?" + acs.CanonicalQuery(params))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// desktopLines returns the banner's desktop lines.
func (s server) desktopLines() []string {
	for i, line := range s.banner {
		if line == "desktops:" {
			return s.banner[i+1:]
		}
	}
	return nil
}

type page struct {
	TotalCount           int
	NextToken            string
	ImageModifiedRecords []struct{ UpdateTime string }
}

func TestRunServesAndShutsDown(t *testing.T) {
	t.Parallel()
	s := startRun(t, 9, "--seed", "3", "--stuck-desktop", "ecd-stuck")
	text := strings.Join(s.banner, "\n")
	if !strings.Contains(text, testKeyID) || !strings.Contains(text, testSecret) || !strings.Contains(text, "1234 records") ||
		!strings.Contains(text, "record order:      oldest first") || !strings.Contains(text, "regions:           cn-hangzhou, cn-shanghai,") ||
		strings.Contains(text, "live") || strings.Contains(text, "quota") {
		t.Fatalf("output:\n%s", text)
	}
	resp, body := s.get(t, "cn-hangzhou", "ecd-stuck")
	var pg page
	if err := json.Unmarshal(body, &pg); err != nil || resp.StatusCode != http.StatusOK || pg.TotalCount != 250 || pg.NextToken == "" {
		t.Fatalf("status %d, page %+v, err %v", resp.StatusCode, pg, err)
	}
}

func TestRunQuotaRegionsOrderLive(t *testing.T) {
	t.Parallel()
	// A quota of one call per 1000 s: the two first calls take the burst,
	// and the third is throttled however slow the machine is.
	s := startRun(t, 8, "--seed", "3", "--regions", "cn-hangzhou,eu-central-1", "--order", "newest",
		"--quota-qps", "0.001", "--quota-burst", "2", "--quota-hint",
		"--live-desktops", "2", "--live-every", "20s", "--live-in-progress", "5s", "--live-fail-fraction", "0.5")
	text := strings.Join(s.banner, "\n")
	for _, want := range []string{
		"regions:           cn-hangzhou, eu-central-1\n",
		"record order:      newest first\n",
		"account quota:     0.001 calls/s, burst 2, TimeLeft hint true\n",
		"live changes:      every 20s, in progress 5s, 50% fail\n",
	} {
		if !strings.Contains(text+"\n", want) {
			t.Errorf("banner lacks %q:\n%s", want, text)
		}
	}
	desktops := s.desktopLines()
	for i, line := range desktops {
		if live := strings.Contains(line, "(live"); live != (i < 2) {
			t.Errorf("desktop line %d %q: live %v", i, line, live)
		}
	}
	id := strings.Fields(desktops[2])[0] // 101 records, not live

	resp, body := s.get(t, "eu-central-1", id, "MaxResults", "100")
	var pg page
	if err := json.Unmarshal(body, &pg); err != nil || resp.StatusCode != http.StatusOK || pg.TotalCount != 101 ||
		len(pg.ImageModifiedRecords) != 100 || pg.ImageModifiedRecords[0].UpdateTime <= pg.ImageModifiedRecords[1].UpdateTime {
		t.Fatalf("eu-central-1: status %d, %s", resp.StatusCode, body)
	}
	var e struct{ Code string }
	if resp, body = s.get(t, "cn-shanghai", id); json.Unmarshal(body, &e) != nil || resp.StatusCode != http.StatusNotFound || e.Code != "InvalidRegionId" {
		t.Fatalf("cn-shanghai: status %d, %s", resp.StatusCode, body)
	}
	resp, body = s.get(t, "cn-hangzhou", id)
	if json.Unmarshal(body, &e) != nil || resp.StatusCode != http.StatusBadRequest || e.Code != "Throttling.User" ||
		!strings.Contains(resp.Header.Get("x-ratelimit-user-api"), ",TimeLeft:") {
		t.Fatalf("third call: status %d, x-ratelimit-user-api %q, %s", resp.StatusCode, resp.Header.Get("x-ratelimit-user-api"), body)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	t.Parallel()
	// A cancelled context makes a run that wrongly starts return at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, args := range [][]string{
		{"--bogus"},
		{"--throttle", "2"},
		{"extra"},
		{"--order", "sideways"},
		{"--live-desktops", "9"},
		{"--live-desktops", "-1"},
		{"--live-fail-fraction", "2"},
		{"--live-every", "-1s"},
		{"--quota-qps", "-1"},
		{"--quota-qps", "1", "--quota-burst", "-1"},
		{"--regions", "cn-hangzhou,,cn-shanghai"},
		{"--regions", "CN-HANGZHOU"},
	} {
		if err := run(ctx, append([]string{"--listen", "127.0.0.1:0"}, args...), io.Discard, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
