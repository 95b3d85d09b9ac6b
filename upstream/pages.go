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
// trips. It fetches the next page only when the consumer asks for it, so
// a consumer that stops (breaks out of the range loop) stops the fetching
// at once, and at most one page is in memory.
//
// It ends after the page with an empty NextToken, or with an error. A
// NextToken that was seen before (a token that does not advance, or a cycle
// A→B→A) ends it with a [*PaginationError] instead of looping forever, and
// more than [MaxEmptyPages] pages in a row without records but with a
// NextToken end it with an [*EmptyPagesError]. The page that broke either
// rule is not yielded, so a consumer that resumes from the last token it
// received neither loses nor repeats records.
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
//   - The same record on two pages (the upstream shifted its window while
//     records were added): records have no id the gateway could
//     de-duplicate on, and two identical changes are possible, so duplicates
//     are passed on as the upstream sent them.
func Pages(ctx context.Context, api API, in DescribeInput) iter.Seq2[*Page, error] {
	in.MaxResults = MaxPageSize
	return func(yield func(*Page, error) bool) {
		seen := map[string]int{}
		if in.NextToken != "" {
			seen[in.NextToken] = 0
		}
		empty := 0 // pages in a row with no records and a NextToken
		for n := 1; ; n++ {
			page, err := api.DescribeImageModifiedRecords(withPageNumber(ctx, n), in)
			if err != nil {
				yield(nil, err)
				return
			}
			page.Token = in.NextToken
			if page.NextToken != "" {
				if first, dup := seen[page.NextToken]; dup {
					yield(nil, &PaginationError{Page: n, FirstSeen: first})
					return
				}
				seen[page.NextToken] = n
				if len(page.Records) == 0 {
					if empty++; empty > MaxEmptyPages {
						yield(nil, &EmptyPagesError{Page: n, Empty: empty})
						return
					}
				} else {
					empty = 0
				}
			}
			if !yield(page, nil) || page.NextToken == "" {
				return
			}
			in.NextToken = page.NextToken
		}
	}
}
