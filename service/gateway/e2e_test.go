package gateway_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

const (
	bigDesktop   = "ecd-big0000000001234"
	smallDesktop = "ecd-small00000000042"
	emptyDesktop = "ecd-empty0000000000"
	stuckDesktop = "ecd-stuck0000000250"
)

var testDesktops = []ecdsim.Desktop{
	{ID: bigDesktop, Records: 1234},
	{ID: smallDesktop, Records: 42},
	{ID: emptyDesktop, Records: 0},
	{ID: stuckDesktop, Records: 250, StuckToken: true},
}

func TestListReturnsTheSimulatorsPage(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	for _, p := range gatewaytest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := h.Client(p.Opts...)
			first, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageSize: 7,
			}))
			if err != nil {
				t.Fatal(err)
			}
			if n := len(first.Msg.GetRecords()); n != 7 {
				t.Fatalf("got %d records, want 7", n)
			}
			h.CheckRecords(t, bigDesktop, 0, first.Msg.GetRecords())
			if first.Msg.GetTotalCount() != 1234 || first.Msg.GetRequestId() == "" || first.Msg.GetNextPageToken() == "" {
				t.Fatalf("total_count %d, request_id %q, next_page_token %q", first.Msg.GetTotalCount(), first.Msg.GetRequestId(), first.Msg.GetNextPageToken())
			}
			second, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageSize: 100, PageToken: first.Msg.GetNextPageToken(),
			}))
			if err != nil {
				t.Fatal(err)
			}
			if n := len(second.Msg.GetRecords()); n != 100 {
				t.Fatalf("second page: got %d records, want 100", n)
			}
			h.CheckRecords(t, bigDesktop, 7, second.Msg.GetRecords())
		})
	}
	// page_size 0 means the upstream default of 10; the last page has no token.
	res, err := h.Client().ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: emptyDesktop,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Msg.GetRecords()) != 0 || res.Msg.GetNextPageToken() != "" || res.Msg.GetTotalCount() != 0 {
		t.Fatalf("empty desktop: %v", res.Msg)
	}
}

func TestStreamDeliversEveryRecordOnceInThirteenCalls(t *testing.T) {
	t.Parallel()
	for _, p := range gatewaytest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			t.Parallel()
			h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
			stream, err := h.Client(p.Opts...).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: bigDesktop,
			}))
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := gatewaytest.Drain(stream)
			if err != nil {
				t.Fatal(err)
			}
			records := gatewaytest.RecordsOf(msgs)
			if len(records) != 1234 {
				t.Fatalf("got %d records, want 1234", len(records))
			}
			h.CheckRecords(t, bigDesktop, 0, records) // every record, in order, so none twice
			if len(msgs) != 13 {
				t.Errorf("got %d messages, want one per upstream page: 13", len(msgs))
			}
			if calls := h.Sim.DesktopCalls(bigDesktop); calls != 13 {
				t.Errorf("upstream calls = %d, want ceil(1234/100) = 13", calls)
			}
			for i, m := range msgs {
				last := i == len(msgs)-1
				if (m.GetResumeToken() == "") != last {
					t.Errorf("message %d: resume_token %q (last message: %v)", i, m.GetResumeToken(), last)
				}
				if m.GetRequestId() == "" || m.GetTotalCount() != 1234 {
					t.Errorf("message %d: request_id %q total_count %d", i, m.GetRequestId(), m.GetTotalCount())
				}
			}
		})
	}
}

func TestStreamMaxRecordsStopsEarlyAndResumes(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	c := h.Client(connect.WithGRPC())
	stream, err := c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop, MaxRecords: 150,
	}))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := gatewaytest.Drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	first := gatewaytest.RecordsOf(msgs)
	if len(first) != 150 {
		t.Fatalf("max_records 150: got %d records", len(first))
	}
	h.CheckRecords(t, bigDesktop, 0, first)
	if calls := h.Sim.DesktopCalls(bigDesktop); calls != 2 {
		t.Fatalf("max_records 150 made %d upstream calls, want 2", calls)
	}

	// The last message's token resumes mid-page, right after record 150.
	stream, err = c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageToken: msgs[len(msgs)-1].GetResumeToken(),
	}))
	if err != nil {
		t.Fatal(err)
	}
	rest, err := gatewaytest.Drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	if got := gatewaytest.RecordsOf(rest); len(got) != 1234-150 {
		t.Fatalf("resumed stream: got %d records, want %d", len(got), 1234-150)
	} else {
		h.CheckRecords(t, bigDesktop, 150, got)
	}
	if calls := h.Sim.DesktopCalls(bigDesktop); calls != 2+12 {
		t.Errorf("resumed stream made %d upstream calls, want 12 (pages at 100..1200)", calls-2)
	}

	// A List page token works as a stream's starting point too.
	page, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageSize: 40,
	}))
	if err != nil {
		t.Fatal(err)
	}
	stream, err = c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageToken: page.Msg.GetNextPageToken(),
	}))
	if err != nil {
		t.Fatal(err)
	}
	tail, err := gatewaytest.Drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	if got := gatewaytest.RecordsOf(tail); len(got) != 2 {
		t.Fatalf("stream after a 40-record List page of 42: got %d records", len(got))
	} else {
		h.CheckRecords(t, smallDesktop, 40, got)
	}
}

func TestStreamResumesFromTheMiddle(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	c := h.Client()
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := c.StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop,
	}))
	if err != nil {
		t.Fatal(err)
	}
	var got []*imagerecordsv1.ImageModifiedRecord
	var token string
	for i := 0; i < 5 && stream.Receive(); i++ {
		got = append(got, stream.Msg().GetRecords()...)
		token = stream.Msg().GetResumeToken()
	}
	cancel() // the caller goes away after five messages
	_ = stream.Close()
	if len(got) != 500 {
		t.Fatalf("first five messages carried %d records", len(got))
	}
	stream, err = c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageToken: token,
	}))
	if err != nil {
		t.Fatal(err)
	}
	rest, err := gatewaytest.Drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, gatewaytest.RecordsOf(rest)...)
	if len(got) != 1234 {
		t.Fatalf("first part and resumed part: %d records, want 1234", len(got))
	}
	h.CheckRecords(t, bigDesktop, 0, got)
}

func TestCancelledStreamStopsUpstreamFetching(t *testing.T) {
	t.Parallel()
	const huge = "ecd-huge00000100000"
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: []ecdsim.Desktop{{ID: huge, Records: 100_000}},
		Faults:   ecdsim.Faults{Latency: 20 * time.Millisecond},
	})
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: huge,
	}))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if !stream.Receive() {
			t.Fatalf("message %d: %v", i, stream.Err())
		}
	}
	cancel()
	atCancel := h.Sim.DesktopCalls(huge)
	_ = stream.Close()
	h.Gateway.WaitIdle() // the gateway's handler has returned
	after := h.Sim.DesktopCalls(huge)
	if after > atCancel+1 {
		t.Errorf("upstream calls went from %d at cancel to %d: want at most the page in flight", atCancel, after)
	}
	if after >= 1000 {
		t.Errorf("the gateway fetched all %d pages", after)
	}
}

func TestStuckNextTokenFailsClearly(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	// A gateway that followed the token would stream forever: bound the wait.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: stuckDesktop,
	}))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := gatewaytest.Drain(stream)
	if connect.CodeOf(err) != connect.CodeInternal || !strings.Contains(err.Error(), "NextToken did not advance") {
		t.Fatalf("err = %v, want Internal naming the NextToken that did not advance", err)
	}
	if info := gatewaytest.ErrorInfo(t, err); info.GetReason() != "UPSTREAM_TOKEN_REPEATED" {
		t.Errorf("ErrorInfo = %v", info)
	}
	if got := gatewaytest.RecordsOf(msgs); len(got) != 100 {
		t.Errorf("delivered %d records before the repeat, want the first page's 100", len(got))
	}
	if calls := h.Sim.DesktopCalls(stuckDesktop); calls != 2 {
		t.Errorf("upstream calls = %d, want 2 (the repeat is caught on the second page)", calls)
	}
}

func TestThrottlingIsRetriedAway(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Faults: ecdsim.Faults{ThrottleFraction: 0.5}})
	stream, err := h.Client().StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop,
	}))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := gatewaytest.Drain(stream)
	if err != nil {
		t.Fatal(err)
	}
	records := gatewaytest.RecordsOf(msgs)
	if len(records) != 1234 {
		t.Fatalf("got %d records, want 1234", len(records))
	}
	h.CheckRecords(t, bigDesktop, 0, records)
	if st := h.Sim.Stats(); st.Throttled == 0 || st.Pages != 13 {
		t.Errorf("simulator: %d throttled, %d pages; want some throttled and exactly 13 pages", st.Throttled, st.Pages)
	}
}

func TestPersistentThrottlingIsUnavailableWithDetails(t *testing.T) {
	t.Parallel()
	for _, p := range gatewaytest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			t.Parallel()
			h := gatewaytest.New(t, gatewaytest.Config{
				Desktops: testDesktops,
				Faults:   ecdsim.Faults{ThrottleFraction: 1},
				// Not the default 30 s: a page waits this long for quota
				// before the caller learns of the throttling.
				Args: []string{"--upstream-max-wait", "1s"},
			})
			before := h.Sim.Stats().Throttled
			start := time.Now()
			stream, err := h.Client(p.Opts...).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: bigDesktop,
			}))
			if err != nil {
				t.Fatal(err)
			}
			_, err = gatewaytest.Drain(stream)
			if connect.CodeOf(err) != connect.CodeUnavailable {
				t.Fatalf("err = %v, want Unavailable", err)
			}
			if elapsed := time.Since(start); elapsed < time.Second {
				t.Errorf("gave up after %v, before the max wait of 1 s", elapsed)
			}
			info := gatewaytest.ErrorInfo(t, err)
			if info.GetReason() != "Throttling.User" || info.GetDomain() != "ecd.aliyuncs.com" ||
				info.GetMetadata()["upstream_request_id"] == "" || info.GetMetadata()["recommend"] == "" {
				t.Errorf("ErrorInfo = %v", info)
			}
			if retry := gatewaytest.RetryInfo(t, err); retry.GetRetryDelay().AsDuration() <= 0 {
				t.Errorf("RetryInfo = %v", retry)
			}
			// Throttling is retried, paced: more than one attempt, and far
			// fewer than an unpaced loop would make in a second.
			if attempts := h.Sim.Stats().Throttled - before; attempts < 2 || attempts > 150 {
				t.Errorf("%d attempts in the max wait of 1 s, want paced retries", attempts)
			}
		})
	}
}

func TestWrongSecretIsTheGatewaysFault(t *testing.T) {
	t.Parallel()
	const wrong = "wrong-secret-ABCDEF123456"
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Credentials: libraryCredentials(t, gatewaytest.KeyID, wrong)})
	_, err := h.Client().ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop,
	}))
	if connect.CodeOf(err) != connect.CodeInternal {
		t.Fatalf("err = %v, want Internal: a bad signature is the gateway's fault, not the caller's", err)
	}
	if info := gatewaytest.ErrorInfo(t, err); info.GetReason() != "SignatureDoesNotMatch" {
		t.Errorf("ErrorInfo = %v", info)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), gatewaytest.KeySecret) {
		t.Errorf("the error reveals a secret: %v", err)
	}
	if st := h.Sim.Stats(); st.AuthFailures != 1 {
		t.Errorf("auth failures = %d: a signature error must not be retried", st.AuthFailures)
	}
}

func TestBadInputNeverReachesTheUpstream(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	c := h.Client()
	otherDesktopToken := func() string {
		res, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
			RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageSize: 5,
		}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetNextPageToken()
	}()
	before := h.Sim.Stats().Requests

	list := []struct {
		name  string
		req   *imagerecordsv1.ListImageModifiedRecordsRequest
		field string
	}{
		{"empty region", &imagerecordsv1.ListImageModifiedRecordsRequest{DesktopId: bigDesktop}, "region_id"},
		{"odd region", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "evil.com/x", DesktopId: bigDesktop}, "region_id"},
		{"empty desktop", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region}, "desktop_id"},
		{"overlong desktop", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: "ecd-" + strings.Repeat("a", 61)}, "desktop_id"},
		{"odd characters", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: "ecd-abc$%&"}, "desktop_id"},
		{"not a desktop id", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: "i-bp1abcdef"}, "desktop_id"},
		{"page_size 101", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageSize: 101}, "page_size"},
		{"page_size -1", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageSize: -1}, "page_size"},
		{"junk token", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageToken: "junk!!"}, "page_token"},
		{"overlong token", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageToken: strings.Repeat("A", 5000)}, "page_token"},
		{"another desktop's token", &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageToken: otherDesktopToken}, "page_token"},
	}
	for _, tc := range list {
		t.Run("list/"+tc.name, func(t *testing.T) {
			_, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(tc.req))
			gatewaytest.CheckFieldViolation(t, err, tc.field)
		})
	}
	streams := []struct {
		name  string
		req   *imagerecordsv1.StreamImageModifiedRecordsRequest
		field string
	}{
		{"empty desktop", &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region}, "desktop_id"},
		{"max_records -1", &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop, MaxRecords: -1}, "max_records"},
		{"junk token", &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop, PageToken: "AAAA"}, "page_token"},
	}
	for _, tc := range streams {
		t.Run("stream/"+tc.name, func(t *testing.T) {
			stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(tc.req))
			if err == nil {
				_, err = gatewaytest.Drain(stream)
			}
			gatewaytest.CheckFieldViolation(t, err, tc.field)
		})
	}
	t.Run("malformed JSON", func(t *testing.T) {
		code, body := postJSON(t, h.URL+"/ecd.imagerecords.v1.ImageRecordsService/ListImageModifiedRecords", `{"regionId": "cn-hangzhou", "desktopId": `)
		if code != 400 || !strings.Contains(body, `"invalid_argument"`) {
			t.Errorf("HTTP %d %s, want 400 invalid_argument", code, body)
		}
	})
	if after := h.Sim.Stats().Requests; after != before {
		t.Errorf("bad input made %d upstream calls, want 0", after-before)
	}
}

func TestStreamOutlivesReadHeaderTimeout(t *testing.T) {
	t.Parallel()
	// Five pages at 200 ms each take twice the header timeout. (A shorter
	// timeout can cut the connection preface itself on a loaded machine.)
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Faults:   ecdsim.Faults{Latency: 200 * time.Millisecond},
		Args:     []string{"--read-header-timeout", "500ms"},
	})
	start := time.Now()
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop, MaxRecords: 500,
	}))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := gatewaytest.Drain(stream)
	if err != nil {
		t.Fatalf("after %v: %v", time.Since(start), err)
	}
	if got := gatewaytest.RecordsOf(msgs); len(got) != 500 {
		t.Fatalf("got %d records, want 500", len(got))
	}
	if elapsed := time.Since(start); elapsed < 500*time.Millisecond {
		t.Fatalf("the stream took %v, not longer than the header timeout: the test proves nothing", elapsed)
	}
}

func TestResponseCompressionIsOptIn(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		args []string
		want string // Content-Encoding of a 100-record page
	}{
		{"default: never", nil, ""},
		{"--compress-min-bytes 1024", []string{"--compress-min-bytes", "1024"}, "gzip"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: tc.args})
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.URL+"/ecd.imagerecords.v1.ImageRecordsService/ListImageModifiedRecords",
				strings.NewReader(`{"regionId":"cn-hangzhou","desktopId":"`+bigDesktop+`","pageSize":100}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept-Encoding", "gzip")
			res, err := h.HTTP.Transport.RoundTrip(req) // the raw answer, not decompressed
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusOK || res.Header.Get("Content-Encoding") != tc.want {
				t.Errorf("HTTP %d, Content-Encoding %q, want %q", res.StatusCode, res.Header.Get("Content-Encoding"), tc.want)
			}
		})
	}
}

// libraryCredentials is an AccessKey pair through the real credentials
// library.
func libraryCredentials(t *testing.T, id, secret string) upstream.CredentialsProvider {
	t.Helper()
	c, err := gatewaytest.LibraryCredentials(id, secret)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
