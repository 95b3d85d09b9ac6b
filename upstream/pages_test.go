package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

// fakeAPI answers with fn and records every input.
type fakeAPI struct {
	fn func(call int, in upstream.DescribeInput) (*upstream.Page, error)

	mu    sync.Mutex
	calls []upstream.DescribeInput
}

func (f *fakeAPI) DescribeImageModifiedRecords(_ context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	f.mu.Lock()
	f.calls = append(f.calls, in)
	n := len(f.calls)
	f.mu.Unlock()
	return f.fn(n, in)
}

func (f *fakeAPI) inputs() []upstream.DescribeInput {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeAPI) tokens() []string {
	var ts []string
	for _, in := range f.inputs() {
		ts = append(ts, in.NextToken)
	}
	return ts
}

// byToken answers the page for each requested token from next: the page
// asked with token k returns NextToken next[k] and one record naming k.
func byToken(next map[string]string) func(int, upstream.DescribeInput) (*upstream.Page, error) {
	return func(_ int, in upstream.DescribeInput) (*upstream.Page, error) {
		nt, ok := next[in.NextToken]
		if !ok {
			return nil, fmt.Errorf("unexpected token %q", in.NextToken)
		}
		return &upstream.Page{
			RequestID: "req-" + in.NextToken,
			NextToken: nt,
			Records:   []upstream.Record{{ImageID: "m-" + in.NextToken}},
		}, nil
	}
}

// collect drains the sequence, recording the pages and errors it yielded.
func collect(ctx context.Context, api upstream.API, in upstream.DescribeInput) (pages []*upstream.Page, errs []error) {
	for p, err := range upstream.Pages(ctx, api, in) {
		if err != nil {
			if p != nil {
				panic("Pages yielded a page together with an error")
			}
			errs = append(errs, err)
			continue
		}
		pages = append(pages, p)
	}
	return pages, errs
}

func TestPagesFollowsTokens(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name       string
		start      string
		next       map[string]string
		wantTokens []string // requested, in order
	}{
		{"single page", "", map[string]string{"": ""}, []string{""}},
		{"three pages", "", map[string]string{"": "A", "A": "B", "B": ""}, []string{"", "A", "B"}},
		{"resume from a token", "B", map[string]string{"B": "C", "C": ""}, []string{"B", "C"}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &fakeAPI{fn: byToken(tc.next)}
			in := upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x", MaxResults: 10, NextToken: tc.start}
			pages, errs := collect(t.Context(), api, in)
			if len(errs) != 0 {
				t.Fatalf("errors: %v", errs)
			}
			if got := api.tokens(); !slices.Equal(got, tc.wantTokens) {
				t.Errorf("requested tokens %q, want %q", got, tc.wantTokens)
			}
			if len(pages) != len(tc.wantTokens) {
				t.Fatalf("yielded %d pages, want %d", len(pages), len(tc.wantTokens))
			}
			for i, p := range pages {
				if want := (upstream.Cursor{Token: p.NextToken}); p.Resume != want {
					t.Errorf("page %d: Resume = %+v, want %+v", i+1, p.Resume, want)
				}
				if p.Records[0].ImageID != "m-"+tc.wantTokens[i] {
					t.Errorf("page %d is the answer to token %q, want %q", i+1, p.Records[0].ImageID, tc.wantTokens[i])
				}
			}
			if last := pages[len(pages)-1]; last.NextToken != "" {
				t.Errorf("the last page yielded has NextToken %q, want empty", last.NextToken)
			}
			for i, got := range api.inputs() {
				if got.MaxResults != upstream.MaxPageSize || got.RegionID != testRegion || got.DesktopID != "ecd-x" {
					t.Errorf("call %d input %+v, want region, desktop and MaxResults %d", i+1, got, upstream.MaxPageSize)
				}
			}
		})
	}
}

func TestPagesForcesMaxPageSize(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name       string
		maxResults int
	}{
		{"unset", 0},
		{"ten", 10},
		{"one", 1},
		{"hundred", 100},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &fakeAPI{fn: byToken(map[string]string{"": "A", "A": ""})}
			_, errs := collect(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x", MaxResults: tc.maxResults})
			if len(errs) != 0 {
				t.Fatalf("errors: %v", errs)
			}
			for i, in := range api.inputs() {
				if in.MaxResults != 100 {
					t.Errorf("call %d: MaxResults = %d, want 100", i+1, in.MaxResults)
				}
			}
		})
	}
}

func TestPagesRepeatedToken(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name          string
		start         string
		next          map[string]string
		wantCalls     int
		wantYielded   []string // the tokens of the pages yielded
		wantPage      int
		wantFirstSeen int
	}{
		{"token does not advance", "", map[string]string{"": "A", "A": "A"}, 2, []string{""}, 2, 1},
		{"cycle A→B→A", "", map[string]string{"": "A", "A": "B", "B": "A"}, 3, []string{"", "A"}, 3, 1},
		{"cycle A→B→C→B", "", map[string]string{"": "A", "A": "B", "B": "C", "C": "B"}, 4, []string{"", "A", "B"}, 4, 2},
		{"start token comes back at once", "T", map[string]string{"T": "T"}, 1, nil, 1, 0},
		{"start token comes back later", "T", map[string]string{"T": "U", "U": "T"}, 2, []string{"T"}, 2, 0},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &fakeAPI{fn: byToken(tc.next)}
			pages, errs := collect(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x", NextToken: tc.start})
			if n := len(api.inputs()); n != tc.wantCalls {
				t.Errorf("%d calls, want %d", n, tc.wantCalls)
			}
			var yielded []string
			for _, p := range pages {
				yielded = append(yielded, strings.TrimPrefix(p.Records[0].ImageID, "m-"))
			}
			if !slices.Equal(yielded, tc.wantYielded) {
				t.Errorf("yielded pages for tokens %q, want %q (the page returning the repeated token must not be yielded)", yielded, tc.wantYielded)
			}
			if len(errs) != 1 {
				t.Fatalf("yielded errors %v, want exactly one *PaginationError", errs)
			}
			pe, ok := errors.AsType[*upstream.PaginationError](errs[0])
			if !ok {
				t.Fatalf("error %v (%T), want *upstream.PaginationError", errs[0], errs[0])
			}
			if pe.Page != tc.wantPage || pe.FirstSeen != tc.wantFirstSeen {
				t.Errorf("PaginationError{Page: %d, FirstSeen: %d}, want {Page: %d, FirstSeen: %d}", pe.Page, pe.FirstSeen, tc.wantPage, tc.wantFirstSeen)
			}
		})
	}
}

func TestPagesStopsWhenTheConsumerStops(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name      string
		breakAt   int
		wantCalls int
	}{
		{"after the first page", 1, 1},
		{"after the third page", 3, 3},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// An endless sequence of fresh tokens.
			api := &fakeAPI{fn: func(call int, in upstream.DescribeInput) (*upstream.Page, error) {
				return &upstream.Page{NextToken: fmt.Sprintf("tok-%d", call)}, nil
			}}
			n := 0
			for _, err := range upstream.Pages(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"}) {
				if err != nil {
					t.Fatalf("error: %v", err)
				}
				n++
				if n == tc.breakAt {
					break
				}
			}
			if got := len(api.inputs()); got != tc.wantCalls {
				t.Errorf("%d calls, want %d", got, tc.wantCalls)
			}
		})
	}
}

func TestPagesAPIErrorEndsTheSequence(t *testing.T) {
	t.Parallel()
	boom := &upstream.APIError{HTTPStatus: 400, Code: "Throttling.User"}
	testCases := []struct {
		name        string
		failAt      int
		wantYielded int
	}{
		{"on the first page", 1, 0},
		{"on the third page", 3, 2},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &fakeAPI{fn: func(call int, in upstream.DescribeInput) (*upstream.Page, error) {
				if call == tc.failAt {
					return nil, boom
				}
				return &upstream.Page{NextToken: fmt.Sprintf("tok-%d", call)}, nil
			}}
			pages, errs := collect(t.Context(), api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"})
			if len(pages) != tc.wantYielded {
				t.Errorf("yielded %d pages, want %d", len(pages), tc.wantYielded)
			}
			if len(errs) != 1 || !errors.Is(errs[0], boom) {
				t.Errorf("yielded errors %v, want the API error once", errs)
			}
			if got := len(api.inputs()); got != tc.failAt {
				t.Errorf("%d calls, want %d (nothing after the error)", got, tc.failAt)
			}
		})
	}
}

type ctxKey struct{}

func TestPagesPassesTheContext(t *testing.T) {
	t.Parallel()
	ctx := context.WithValue(t.Context(), ctxKey{}, "mine")
	var got []any
	api := apiFunc(func(ctx context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
		got = append(got, ctx.Value(ctxKey{}))
		if in.NextToken == "" {
			return &upstream.Page{NextToken: "A"}, nil
		}
		return &upstream.Page{}, nil
	})
	for _, err := range upstream.Pages(ctx, api, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"}) {
		if err != nil {
			t.Fatalf("error: %v", err)
		}
	}
	if len(got) != 2 || got[0] != "mine" || got[1] != "mine" {
		t.Errorf("the API saw context values %v, want the caller's context on both calls", got)
	}
}

type apiFunc func(context.Context, upstream.DescribeInput) (*upstream.Page, error)

func (f apiFunc) DescribeImageModifiedRecords(ctx context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	return f(ctx, in)
}
