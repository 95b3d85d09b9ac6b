package service_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
)

// "Nothing lost, nothing repeated", where it is decided: every mix of
// List pages and Stream calls cut by max_records, resumed from each
// other's tokens, must deliver a desktop's records exactly once and in
// order, whatever the page sizes and wherever a cut falls inside an
// upstream page.

// offsetDesktop is an upstream desktop of n records whose NextTokens are
// record offsets ("o<offset>"); it honours MaxResults as ECD does, and
// counts its calls.
type offsetDesktop struct {
	n     int
	mu    sync.Mutex
	calls int
}

func (d *offsetDesktop) DescribeImageModifiedRecords(_ context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	d.mu.Lock()
	d.calls++
	d.mu.Unlock()
	start := 0
	if in.NextToken != "" {
		var err error
		if start, err = strconv.Atoi(strings.TrimPrefix(in.NextToken, "o")); err != nil || start > d.n {
			return nil, &upstream.APIError{HTTPStatus: 400, Code: "InvalidParameter.NextToken"}
		}
	}
	size := in.MaxResults
	if size == 0 {
		size = upstream.DefaultPageSize
	}
	end := min(start+size, d.n)
	p := &upstream.Page{RequestID: fmt.Sprintf("R%d", start), TotalCount: d.n, Records: make([]upstream.Record, 0, end-start)}
	for i := start; i < end; i++ {
		p.Records = append(p.Records, upstream.Record{Status: 1, ImageID: fmt.Sprintf("m-%d", i)})
	}
	if end < d.n {
		p.NextToken = fmt.Sprintf("o%d", end)
	}
	return p, nil
}

func (d *offsetDesktop) callCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

// resumeClient serves the service over d on loopback.
func resumeClient(t testing.TB, d *offsetDesktop) imagerecordsv1connect.ImageRecordsServiceClient {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(service.New(d)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return imagerecordsv1connect.NewImageRecordsServiceClient(srv.Client(), srv.URL)
}

// step is one call of a resume chain: a List page of pageSize, or a
// Stream of at most maxRecords (0: all).
type step struct {
	list       bool
	pageSize   int32
	maxRecords int64
}

func (s step) String() string {
	if s.list {
		return fmt.Sprintf("List(%d)", s.pageSize)
	}
	return fmt.Sprintf("Stream(%d)", s.maxRecords)
}

// run makes the call of s from token and returns the image ids delivered
// and the token that continues after them ("" when nothing follows).
func (s step) run(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient, token string) ([]string, string, error) {
	var ids []string
	if s.list {
		res, err := c.ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
			RegionId: "cn-hangzhou", DesktopId: "ecd-resume", PageSize: s.pageSize, PageToken: token}))
		if err != nil {
			return nil, "", err
		}
		for _, r := range res.Msg.GetRecords() {
			ids = append(ids, r.GetImageId())
		}
		return ids, res.Msg.GetNextPageToken(), nil
	}
	stream, err := c.StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: "cn-hangzhou", DesktopId: "ecd-resume", PageToken: token, MaxRecords: s.maxRecords}))
	if err != nil {
		return nil, "", err
	}
	defer stream.Close()
	next := token
	for stream.Receive() {
		for _, r := range stream.Msg().GetRecords() {
			ids = append(ids, r.GetImageId())
		}
		next = stream.Msg().GetResumeToken()
	}
	return ids, next, stream.Err()
}

// chain runs steps in turn (repeating the last one) from the start until
// a call says nothing follows, and returns every id delivered.
func chain(t testing.TB, c imagerecordsv1connect.ImageRecordsServiceClient, n int, steps []step) []string {
	t.Helper()
	var all []string
	token := ""
	for i := 0; ; i++ {
		s := steps[min(i, len(steps)-1)]
		ids, next, err := s.run(t.Context(), c, token)
		if err != nil {
			t.Fatalf("call %d %v from token %q: %v", i+1, s, token, err)
		}
		all = append(all, ids...)
		if next == "" {
			return all
		}
		if i > n+10 {
			t.Fatalf("%v: still going after %d calls for %d records", steps, i+1, n)
		}
		token = next
	}
}

func wantIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("m-%d", i)
	}
	return out
}

func TestResumeDeliversEveryRecordOnce(t *testing.T) {
	t.Parallel()
	sizes := []int{0, 1, 99, 100, 101, 250}
	chains := [][]step{
		{{maxRecords: 0}},
		{{maxRecords: 1}},
		{{maxRecords: 70}},  // cut inside the first upstream page, every time
		{{maxRecords: 100}}, // cut on the page boundary
		{{maxRecords: 150}}, // cut inside the second page
		{{maxRecords: 30}, {maxRecords: 30}, {maxRecords: 30}, {maxRecords: 0}}, // three mid-page resumes, then the rest
		{{list: true, pageSize: 7}},
		{{list: true, pageSize: 0}}, // the default of 10
		{{list: true, pageSize: 100}},
		{{maxRecords: 45}, {list: true, pageSize: 33}, {maxRecords: 45}, {list: true, pageSize: 100}}, // stream and list tokens mixed
		{{list: true, pageSize: 7}, {maxRecords: 0}},
	}
	for _, n := range sizes {
		for _, steps := range chains {
			t.Run(fmt.Sprintf("n=%d/%v", n, steps), func(t *testing.T) {
				t.Parallel()
				got := chain(t, resumeClient(t, &offsetDesktop{n: n}), n, steps)
				if want := wantIDs(n); !slices.Equal(got, want) {
					t.Errorf("delivered %d records %v, want the %d records in order, each once", len(got), got, n)
				}
			})
		}
	}
}

// TestResumedStreamCostsNoExtraCall: a stream resumed mid-page asks for that
// page again and no page beyond the last one its max_records needs.
func TestResumedStreamCostsNoExtraCall(t *testing.T) {
	t.Parallel()
	d := &offsetDesktop{n: 1000}
	c := resumeClient(t, d)
	ids, token, err := step{maxRecords: 150}.run(t.Context(), c, "")
	if err != nil || len(ids) != 150 || d.callCount() != 2 {
		t.Fatalf("first stream: %d records, %d calls, %v; want 150 in 2 calls", len(ids), d.callCount(), err)
	}
	ids, _, err = step{maxRecords: 100}.run(t.Context(), c, token)
	if err != nil || !slices.Equal(ids, wantIDs(250)[150:]) {
		t.Fatalf("resumed stream delivered %v, %v; want records 150..249", ids, err)
	}
	if calls := d.callCount() - 2; calls != 2 {
		t.Errorf("the resumed max_records=100 stream from offset 150 made %d calls, want 2 (page 100..199 again, then 200..299)", calls)
	}
}

// FuzzResumeReconstructsTheSequence: any chain of List and Stream calls,
// cut anywhere and resumed, delivers every record exactly once, in order.
func FuzzResumeReconstructsTheSequence(f *testing.F) {
	f.Add(uint16(250), []byte{70, 30, 0x80 | 7, 101, 0})
	f.Add(uint16(1000), []byte{0x80 | 99, 1, 0x80 | 100, 199})
	f.Add(uint16(101), []byte{100, 1})
	f.Add(uint16(0), []byte{5})
	f.Fuzz(func(t *testing.T, n uint16, program []byte) {
		size := int(n % 1200)
		var steps []step
		for _, b := range program {
			if b&0x80 != 0 {
				steps = append(steps, step{list: true, pageSize: int32(b&0x7f) % 101})
			} else {
				steps = append(steps, step{maxRecords: int64(b) * 3})
			}
		}
		if len(steps) == 0 || len(steps) > 40 {
			return
		}
		got := chain(t, resumeClient(t, &offsetDesktop{n: size}), size, steps)
		if want := wantIDs(size); !slices.Equal(got, want) {
			t.Errorf("%d records with %v: delivered %d records, want each of %d once, in order", size, steps, len(got), size)
		}
	})
}
