package upstream

import (
	"context"
	"fmt"
	"iter"
)

// MaxEmptyPages is how many pages in a row [Pages] follows that have no
// records but a NextToken. An upstream may legitimately answer a few empty
// pages (records deleted while paging, a filter applied after the page was
// cut); one that keeps doing it with ever new tokens would make a stream
// page forever without ever sending a record.
const MaxEmptyPages = 10

// EmptyPagesError reports that the upstream answered more than
// [MaxEmptyPages] pages in a row without records but with a new NextToken
// each, so [Pages] stopped instead of paging forever. It is a malformed
// answer sequence: errors.Is(err, [ErrMalformedResponse]) holds, so a
// caller that handles malformed answers handles it too.
type EmptyPagesError struct {
	// Page is the 1-based number of the page that made the run too long.
	Page int
	// Empty is the number of empty pages in a row, that page included.
	Empty int
}

func (e *EmptyPagesError) Error() string {
	return fmt.Sprintf("upstream returned %d empty pages in a row, each with a new NextToken (through page %d); stopped instead of paging forever", e.Empty, e.Page)
}

// Is makes errors.Is(err, ErrMalformedResponse) hold.
func (e *EmptyPagesError) Is(target error) bool { return target == ErrMalformedResponse }

// Pages pages through a desktop's records from in.NextToken on, always asking
// for [MaxPageSize] records per call so a stream costs the fewest round
// trips ([PageSize] changes that). By default it fetches the next page only
// when the consumer asks for it; with [Prefetch] it fetches it while the
// consumer handles the current one. Either way a consumer that stops
// (breaks out of the range loop) stops the fetching at once, and at most
// two pages are in memory.
//
// [Skip] and [Limit] cut the sequence to a window of records: a yielded
// page's Records are exactly the records of the window it holds, and its
// Resume cursor says where a new sequence continues after them, so a
// consumer that hands out Resume as a token loses and repeats nothing,
// even when a limit cuts an upstream page in half. Both are counted here
// and nowhere else.
//
// It ends after the page with an empty NextToken, after the page that
// reaches the limit, or with an error. A NextToken that was seen before (a
// token that does not advance, or a cycle A→B→A, the start token included)
// ends it with a [*PaginationError] instead of looping forever, and more
// than [MaxEmptyPages] pages in a row without records but with a NextToken
// end it with an [*EmptyPagesError]. The page that broke either rule is not
// yielded, so a consumer that resumes from the last Resume it received
// neither loses nor repeats records.
//
// What Pages tolerates, on purpose:
//   - TotalCount changing from page to page: records can be added (or
//     removed) while a desktop is paged, and the count is advisory. Each
//     page keeps the count it came with. (A negative count never gets here:
//     the client rejects it as malformed.)
//   - Up to [MaxEmptyPages] empty pages in a row with a NextToken; they are
//     yielded like any page, so a stream consumer still gets a resume point.
//   - An empty last page (no records, no NextToken): the normal end of a
//     desktop whose record count is a multiple of the page size.
//   - A first page with fewer records than Skip (records removed upstream
//     since the cursor was made): it yields no record, and the sequence
//     goes on with the next page.
//   - The same record on two pages (the upstream shifted its window while
//     records were added): records have no id the gateway could
//     de-duplicate on, and two identical changes are possible, so duplicates
//     are passed on as the upstream sent them.
func Pages(ctx context.Context, api API, in DescribeInput, opts ...PagesOption) iter.Seq2[*Page, error] {
	cfg := pagesConfig{pageSize: MaxPageSize}
	for _, opt := range opts {
		opt(&cfg)
	}
	in.MaxResults = cfg.pageSize
	return func(yield func(*Page, error) bool) {
		seq := &pageSequence{api: api, in: in, skip: cfg.skip, limit: cfg.limit, seen: map[string]int{}}
		if in.NextToken != "" {
			seq.seen[in.NextToken] = 0
		}
		if !cfg.prefetch {
			for {
				page, more, err := seq.next(ctx)
				if !yield(page, err) || !more {
					return
				}
			}
		}
		prefetch(ctx, seq, yield)
	}
}

// PagesOption configures [Pages].
type PagesOption func(*pagesConfig)

type pagesConfig struct {
	prefetch bool
	skip     int
	limit    int
	pageSize int
}

// Prefetch makes [Pages] fetch page k+1 while the consumer handles page k,
// so that the consumer's work (converting, sending to a caller) hides
// inside the next round trip. It never runs more than one page ahead: the
// fetched page waits until the consumer takes it.
func Prefetch() PagesOption {
	return func(c *pagesConfig) { c.prefetch = true }
}

// Skip leaves out the first n records of the first page: the records a
// [Cursor] with Skip n says were delivered already.
func Skip(n int) PagesOption {
	return func(c *pagesConfig) { c.skip = max(n, 0) }
}

// Limit makes [Pages] yield at most n records: the page that reaches n is
// cut there and is the last, so a consumer that needs only n records
// causes no call beyond them, prefetching or not. n <= 0: no limit.
func Limit(n int) PagesOption {
	return func(c *pagesConfig) { c.limit = n }
}

// PageSize sets the MaxResults of every call, 1..[MaxPageSize]; the
// default is MaxPageSize, the fewest calls.
func PageSize(n int) PagesOption {
	return func(c *pagesConfig) { c.pageSize = min(max(n, 1), MaxPageSize) }
}

// pageSequence fetches the pages of one desktop in order and enforces the
// rules of [Pages].
type pageSequence struct {
	api     API
	in      DescribeInput
	skip    int            // records of the next page to leave out
	limit   int            // records to yield in all; <= 0: no limit
	seen    map[string]int // NextToken → the page that returned it
	n       int            // pages fetched
	empty   int            // pages in a row with no records and a NextToken
	records int            // records yielded
}

// next fetches the next page. more reports whether another page follows.
func (s *pageSequence) next(ctx context.Context) (page *Page, more bool, err error) {
	s.n++
	token := s.in.NextToken
	page, err = s.api.DescribeImageModifiedRecords(withPageNumber(ctx, s.n), s.in)
	if err != nil {
		return nil, false, err
	}
	if page.NextToken != "" {
		if first, dup := s.seen[page.NextToken]; dup {
			return nil, false, &PaginationError{Page: s.n, FirstSeen: first}
		}
		s.seen[page.NextToken] = s.n
		if len(page.Records) == 0 {
			if s.empty++; s.empty > MaxEmptyPages {
				return nil, false, &EmptyPagesError{Page: s.n, Empty: s.empty}
			}
		} else {
			s.empty = 0
		}
	}
	skip := min(s.skip, len(page.Records))
	s.skip = 0
	page.Records = page.Records[skip:]
	page.Resume = Cursor{Token: page.NextToken}
	more = page.NextToken != ""
	if s.limit > 0 && s.records+len(page.Records) >= s.limit {
		if keep := s.limit - s.records; keep < len(page.Records) {
			page.Records = page.Records[:keep]
			page.Resume = Cursor{Token: token, Skip: skip + keep}
		}
		more = false
	}
	s.records += len(page.Records)
	s.in.NextToken = page.NextToken
	return page, more, nil
}

// prefetch runs seq on a producer goroutine that fetches the next page as
// soon as the consumer has taken the previous one, and yields the pages in
// order. When the consumer stops, the fetch in flight is cancelled and the
// producer has ended before prefetch returns. When ctx ends first, the
// sequence ends with ctx's error, never silently.
func prefetch(ctx context.Context, seq *pageSequence, yield func(*Page, error) bool) {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	type result struct {
		page *Page
		more bool
		err  error
	}
	results := make(chan result) // unbuffered: one page waits, none queue
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(results)
		for {
			page, more, err := seq.next(ctx)
			select {
			case results <- result{page, more, err}:
			case <-ctx.Done():
				return
			}
			if !more || err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-done
	}()
	for r := range results {
		if !yield(r.page, r.err) || r.err != nil || !r.more {
			return
		}
	}
	// The producer gave up before the end: only ctx ending makes it.
	err := context.Cause(parent)
	if err == nil {
		err = context.Canceled
	}
	yield(nil, err)
}
