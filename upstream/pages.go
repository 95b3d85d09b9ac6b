package upstream

import (
	"context"
	"iter"
)

// Pages pages through a desktop's records from in.NextToken on, always asking
// for [MaxPageSize] records per call so a stream costs the fewest round
// trips. It fetches the next page only when the consumer asks for it, so
// a consumer that stops (breaks out of the range loop) stops the fetching
// at once, and at most one page is in memory.
//
// It ends after the page with an empty NextToken, or with an error. A
// NextToken that was seen before (a token that does not advance, or a cycle
// A→B→A) ends it with a [*PaginationError] instead of looping forever; the
// page that returned the repeated token is not yielded, so a consumer that
// resumes from the last token it received neither loses nor repeats
// records.
func Pages(ctx context.Context, api API, in DescribeInput) iter.Seq2[*Page, error] {
	in.MaxResults = MaxPageSize
	return func(yield func(*Page, error) bool) {
		seen := map[string]int{}
		if in.NextToken != "" {
			seen[in.NextToken] = 0
		}
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
			}
			if !yield(page, nil) || page.NextToken == "" {
				return
			}
			in.NextToken = page.NextToken
		}
	}
}
