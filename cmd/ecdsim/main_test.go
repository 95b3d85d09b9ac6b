package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

func TestRunServesAndShutsDown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
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
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--seed", "3", "--stuck-desktop", "ecd-stuck",
			"--access-key-id", "LTAIcmdtest", "--access-key-secret", "cmd-secret"}, pw, io.Discard)
		pw.Close()
	}()

	var addr string
	var out []string
	for line := range lines {
		out = append(out, line)
		if a, ok := strings.CutPrefix(line, "ecdsim listening on "); ok {
			addr = a
		}
		if strings.Contains(line, "ecd-stuck") {
			break
		}
	}
	text := strings.Join(out, "\n")
	if addr == "" || !strings.Contains(text, "LTAIcmdtest") || !strings.Contains(text, "cmd-secret") ||
		!strings.Contains(text, "1234 records") {
		t.Fatalf("output:\n%s", text)
	}

	params := url.Values{
		"RegionId": {"cn-hangzhou"}, "DesktopId": {"ecd-stuck"},
		"Format": {"JSON"}, "AccessKeyId": {"LTAIcmdtest"}, "SignatureMethod": {"HMAC-SHA1"},
		"SignatureVersion": {"1.0"}, "SignatureNonce": {"n1"}, "Action": {"DescribeImageModifiedRecords"},
		"Version": {"2020-09-30"}, "Timestamp": {time.Now().UTC().Format("2006-01-02T15:04:05Z")},
	}
	params.Set("Signature", acs.V1Signature("cmd-secret", http.MethodGet, params))
	resp, err := http.Get(addr + "/?" + acs.CanonicalQuery(params))
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		TotalCount int
		NextToken  string
	}
	err = json.NewDecoder(resp.Body).Decode(&page)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || page.TotalCount != 250 || page.NextToken == "" {
		t.Fatalf("status %d, page %+v, err %v", resp.StatusCode, page, err)
	}

	cancel()
	go func() {
		for range lines { // drain
		}
	}()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--bogus"},
		{"--throttle", "2", "--listen", "127.0.0.1:0"},
		{"--listen", "127.0.0.1:0", "extra"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
