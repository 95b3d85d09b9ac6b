package gateway_test

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// connectGet is one Connect GET of ListImageModifiedRecords as a browser
// or curl sends it: the request message in the query, header as given.
type connectGet struct {
	status int
	header http.Header
	body   string
}

func getList(t *testing.T, h *gatewaytest.Stack, encoding, message string, header http.Header) connectGet {
	t.Helper()
	q := url.Values{"connect": {"v1"}, "encoding": {encoding}, "message": {message}}
	if encoding == "proto" {
		q.Set("base64", "1")
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet,
		h.URL+imagerecordsv1connect.ImageRecordsServiceListImageModifiedRecordsProcedure+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := h.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return connectGet{status: res.StatusCode, header: res.Header, body: string(body)}
}

func ifNoneMatch(etag string) http.Header { return http.Header{"If-None-Match": {etag}} }

// TestListGetRevalidates polls one page of a live desktop as a dashboard
// would: the first GET gets the page and its ETag, the next ones with
// If-None-Match get 304 and no body while the page is the same (the
// gateway still asks the upstream each time), and once a change starts on
// the desktop the page differs, so the old tag gets the new page and a
// new tag.
func TestListGetRevalidates(t *testing.T) {
	t.Parallel()
	const live = "ecd-live000000000003"
	clock := gatewaytest.NewClock(time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC))
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: []ecdsim.Desktop{{ID: live, Records: 3, Live: true}},
		Now:      clock.Now,
		Live:     ecdsim.Live{Every: time.Minute, InProgress: 10 * time.Second},
	})
	message := `{"regionId":"cn-hangzhou","desktopId":"` + live + `","pageSize":10}`

	first := getList(t, h, "json", message, nil)
	etag := first.header.Get("Etag")
	if first.status != http.StatusOK || !strings.HasPrefix(etag, `W/"`) || !strings.Contains(first.body, `"totalCount":3`) {
		t.Fatalf("first GET: HTTP %d, ETag %q, %s", first.status, etag, first.body)
	}
	// Production default: --list-cache-max-age 0.
	if cc := first.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control at the defaults = %q, want no-store", cc)
	}

	before := h.Sim.Stats().Requests
	again := getList(t, h, "json", message, ifNoneMatch(etag))
	if again.status != http.StatusNotModified || again.body != "" || again.header.Get("Etag") != etag {
		t.Fatalf("GET with If-None-Match of an unchanged page: HTTP %d, ETag %q, body %q", again.status, again.header.Get("Etag"), again.body)
	}
	if cc := again.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("304: Cache-Control %q, want the 200's no-store", cc)
	}
	if calls := h.Sim.Stats().Requests - before; calls != 1 {
		t.Errorf("a revalidation made %d upstream calls; the gateway asks the upstream every time (1)", calls)
	}
	// Lists of tags and weak or strong spellings all compare weakly.
	for _, header := range []string{`"nope", ` + etag, strings.TrimPrefix(etag, "W/"), "*"} {
		if got := getList(t, h, "json", message, ifNoneMatch(header)); got.status != http.StatusNotModified {
			t.Errorf("If-None-Match %s: HTTP %d, want 304", header, got.status)
		}
	}
	// Another encoding is another representation, with its own tag.
	wire, err := proto.Marshal(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: live, PageSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	binary := getList(t, h, "proto", base64.RawURLEncoding.EncodeToString(wire), ifNoneMatch(etag))
	if binary.status != http.StatusOK || binary.header.Get("Etag") == etag || binary.header.Get("Etag") == "" {
		t.Errorf("proto GET with the JSON tag: HTTP %d, ETag %q (JSON %q)", binary.status, binary.header.Get("Etag"), etag)
	}

	// A change starts on the live desktop: the page now has 4 records.
	clock.Advance(2 * time.Minute)
	changed := getList(t, h, "json", message, ifNoneMatch(etag))
	newTag := changed.header.Get("Etag")
	if changed.status != http.StatusOK || newTag == "" || newTag == etag || !strings.Contains(changed.body, `"totalCount":4`) {
		t.Fatalf("GET after a change: HTTP %d, ETag %q (was %q), %s", changed.status, newTag, etag, changed.body)
	}
	if got := getList(t, h, "json", message, ifNoneMatch(newTag)); got.status != http.StatusNotModified {
		t.Errorf("GET with the new tag: HTTP %d, want 304", got.status)
	}
}

// TestCacheControlOfEveryAnswer checks what each kind of answer lets
// caches do with --list-cache-max-age set: a List GET may be reused for
// that long (its 304 says so too); POST, streams and errors never.
func TestCacheControlOfEveryAnswer(t *testing.T) {
	t.Parallel()
	// 30s instead of the default 0, to see the max-age of List GETs.
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--list-cache-max-age", "30s"}})
	message := `{"regionId":"cn-hangzhou","desktopId":"` + smallDesktop + `","pageSize":5}`

	get := getList(t, h, "json", message, nil)
	if cc := get.header.Get("Cache-Control"); get.status != http.StatusOK || cc != "private, max-age=30" {
		t.Errorf("GET: HTTP %d, Cache-Control %q, want private, max-age=30", get.status, cc)
	}
	notModified := getList(t, h, "json", message, ifNoneMatch(get.header.Get("Etag")))
	if cc := notModified.header.Get("Cache-Control"); notModified.status != http.StatusNotModified || cc != "private, max-age=30" {
		t.Errorf("304: HTTP %d, Cache-Control %q", notModified.status, cc)
	}
	// A cache keys the answer by the compression and the bearer token
	// (none here) of the request.
	for _, res := range []connectGet{get, notModified} {
		vary := strings.ToLower(strings.Join(res.header.Values("Vary"), ","))
		if !strings.Contains(vary, "accept-encoding") || !strings.Contains(vary, "authorization") {
			t.Errorf("HTTP %d: Vary %q, want the compression header and Authorization", res.status, vary)
		}
	}
	missing := getList(t, h, "json", `{"regionId":"cn-hangzhou","desktopId":"ecd-nosuchdesktop001"}`, nil)
	if missing.status != http.StatusNotFound || missing.header.Get("Cache-Control") != "no-store" || missing.header.Get("Etag") != "" {
		t.Errorf("GET of a missing desktop: HTTP %d, Cache-Control %q, ETag %q", missing.status, missing.header.Get("Cache-Control"), missing.header.Get("Etag"))
	}

	for _, p := range gatewaytest.Protocols {
		c := h.Client(p.Opts...)
		res, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
			RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageSize: 5,
		}))
		if err != nil {
			t.Fatalf("%s POST: %v", p.Name, err)
		}
		if cc := res.Header().Get("Cache-Control"); cc != "no-store" || res.Header().Get("Etag") != "" {
			t.Errorf("%s POST: Cache-Control %q, ETag %q; want no-store and no tag", p.Name, cc, res.Header().Get("Etag"))
		}
		stream, err := c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
			RegionId: gatewaytest.Region, DesktopId: smallDesktop,
		}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := gatewaytest.Drain(stream); err != nil {
			t.Fatalf("%s stream: %v", p.Name, err)
		}
		if cc := stream.ResponseHeader().Get("Cache-Control"); cc != "no-store" {
			t.Errorf("%s stream: Cache-Control %q, want no-store", p.Name, cc)
		}
	}
}

func TestClientFlagsAreChecked(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		args []string
		want string // "" for accepted
	}{
		{[]string{"--list-cache-max-age", "10s"}, ""},
		{[]string{"--list-cache-max-age", "-1s"}, "--list-cache-max-age -1s"},
		{[]string{"--list-cache-max-age", "1500ms"}, "whole seconds"},
		{[]string{"--cors-allowed-origins", "https://dash.example.com, http://127.0.0.1:3000"}, ""},
		{[]string{"--cors-allowed-origins", "*"}, ""},
		{[]string{"--cors-allowed-origins", "https://*.example.com"}, ""},
		{[]string{"--cors-allowed-origins", "https://dash.example.com/"}, "browsers send e.g. https://dash.example.com"},
		{[]string{"--cors-allowed-origins", "dash.example.com"}, "not scheme://host[:port]"},
		{[]string{"--cors-allowed-origins", "https://*.*.example.com"}, "more than one *"},
	}
	for _, tc := range testCases {
		cfg, err := gateway.ParseArgs(tc.args, func(string) (string, bool) { return "", false }, io.Discard)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: %v, want an error with %q", tc.args, err, tc.want)
		case tc.args[0] == "--cors-allowed-origins" && err == nil && len(cfg.CORSAllowedOrigins) == 0:
			t.Errorf("%q: no origins parsed", tc.args)
		}
	}
}
