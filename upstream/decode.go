package upstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
)

// What a successful answer must look like. The rules below are deliberate;
// each says why it fails the answer ([ErrMalformedResponse]) or tolerates
// it. Failing is always recoverable (a stream ends with an Internal error
// and the caller resumes from the last resume token it received), while
// tolerating something wrong can hand callers wrong data or end a stream
// early without anyone noticing, so the rules fail whatever would be
// silently misreported and tolerate only what loses nothing.
//
//   - The body is one JSON object and nothing after it. null, [], "x",
//     truncated JSON (cut anywhere) and trailing garbage are malformed.
//   - RequestId is required and non-empty: every Alibaba Cloud answer, success
//     or error, carries one. A body without it ({} included) is not an ECD
//     answer (a misconfigured proxy, a placeholder); taking it for an empty
//     last page would end a stream early and quietly lose the rest.
//   - Wrong JSON types are malformed, field by field: Status, TotalCount not
//     integers (strings, booleans, 1.5 and also 1e3, which encoding/json
//     refuses for integer fields), NextToken or a record's string fields
//     not strings, ImageModifiedRecords not an array, a record not an
//     object (a null record has no Status, see below). JSON null is the
//     exception for string fields, TotalCount and ImageModifiedRecords:
//     encoding/json leaves them empty, which is what the upstream means by
//     null (RequestId must still be there). Fields this client does not
//     know are ignored (the upstream may add some); key matching is
//     encoding/json's (case-insensitive, the last of duplicate keys wins).
//   - TotalCount may be absent or null (0): it is advisory. Negative is
//     malformed, and so is more than 2^31-1, since the gateway's
//     total_count is int32.
//   - NextToken may be absent or null (the last page). Longer than
//     [MaxNextTokenLength] bytes is malformed: the gateway embeds it in its
//     own page tokens, which are bounded.
//   - A record's Status is required: absent or null is malformed, because
//     the zero value would report the change as in progress (0). A number
//     outside 0..2 is kept as it came (the product contract: an unknown
//     status is passed on as UNSPECIFIED with the raw upstream_status, never
//     dropped), but it must fit the int32 upstream_status, so a number
//     outside the int32 range is malformed rather than silently wrapped.
//   - A record's UpdateTime may be empty or null: the record is kept without
//     a time. Otherwise it must be RFC 3339 and inside what a
//     google.protobuf.Timestamp can carry (after 0001-01-01T00:00:00Z, which
//     would read as "no time", up to 9999-12-31T23:59:59.999999999Z; an
//     offset can push a 0001 or 9999 date out of it). A time out of that
//     range would fail to encode as protobuf JSON in the middle of a stream.
//   - Strings come out valid UTF-8: encoding/json turns invalid bytes and
//     lone surrogates into U+FFFD, which protobuf string fields require.
//   - More records than asked for are passed on (the service trims a List
//     page; a stream message may carry them).

// MaxNextTokenLength bounds an upstream NextToken, in bytes. The tokens
// ECD documents are about 50 bytes; the gateway's own page tokens carry
// the upstream token and are limited to 2048 characters, which this leaves
// room for.
const MaxNextTokenLength = 1024

var (
	// minUpdateTime and maxUpdateTime bound what a google.protobuf.Timestamp
	// can carry; the zero time.Time (0001-01-01T00:00:00Z) itself means "no
	// time" to the service, so the bound is exclusive there.
	minUpdateTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	maxUpdateTime = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
)

type pageJSON struct {
	RequestID            string       `json:"RequestId"`
	TotalCount           int64        `json:"TotalCount"`
	NextToken            string       `json:"NextToken"`
	ImageModifiedRecords []recordJSON `json:"ImageModifiedRecords"`
}

type recordJSON struct {
	Status       *int64 `json:"Status"` // nil: absent or null
	UpdateTime   string `json:"UpdateTime"`
	ImageID      string `json:"ImageId"`
	ImageName    string `json:"ImageName"`
	NewImageID   string `json:"NewImageId"`
	NewImageName string `json:"NewImageName"`
	Reason       string `json:"Reason"`
}

// DecodePage parses a successful DescribeImageModifiedRecords body. Every
// error wraps [ErrMalformedResponse]; see the rules in decode.go.
func DecodePage(body []byte) (*Page, error) { return decodePage(body) }

func decodePage(body []byte) (*Page, error) {
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		// json.Unmarshal would accept null into a struct.
		return nil, fmt.Errorf("%w: body is not a JSON object: %q", ErrMalformedResponse, truncate(t, 40))
	}
	// Room for a full page up front: growing the slice record by record
	// was a sixth of a stream's allocated bytes.
	pj := pageJSON{ImageModifiedRecords: make([]recordJSON, 0, MaxPageSize)}
	if err := json.Unmarshal(body, &pj); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedResponse, err)
	}
	switch {
	case pj.RequestID == "":
		return nil, fmt.Errorf("%w: no RequestId: not an ECD answer", ErrMalformedResponse)
	case pj.TotalCount < 0 || pj.TotalCount > math.MaxInt32:
		return nil, fmt.Errorf("%w: TotalCount %d outside 0..%d", ErrMalformedResponse, pj.TotalCount, math.MaxInt32)
	case len(pj.NextToken) > MaxNextTokenLength:
		return nil, fmt.Errorf("%w: NextToken of %d bytes, more than %d", ErrMalformedResponse, len(pj.NextToken), MaxNextTokenLength)
	}
	p := &Page{
		RequestID:  pj.RequestID,
		TotalCount: int(pj.TotalCount),
		NextToken:  pj.NextToken,
		Records:    make([]Record, len(pj.ImageModifiedRecords)),
	}
	for i, r := range pj.ImageModifiedRecords {
		switch {
		case r.Status == nil:
			return nil, fmt.Errorf("%w: record %d has no Status", ErrMalformedResponse, i)
		case *r.Status < math.MinInt32 || *r.Status > math.MaxInt32:
			return nil, fmt.Errorf("%w: record %d: Status %d outside the int32 range", ErrMalformedResponse, i, *r.Status)
		}
		var t time.Time
		if r.UpdateTime != "" {
			var err error
			if t, err = time.Parse(time.RFC3339Nano, r.UpdateTime); err != nil {
				return nil, fmt.Errorf("%w: record %d: UpdateTime %q is not RFC 3339", ErrMalformedResponse, i, truncate([]byte(r.UpdateTime), 64))
			}
			if !t.After(minUpdateTime) || t.After(maxUpdateTime) {
				return nil, fmt.Errorf("%w: record %d: UpdateTime %q outside 0001-01-01..9999-12-31 UTC", ErrMalformedResponse, i, truncate([]byte(r.UpdateTime), 64))
			}
		}
		p.Records[i] = Record{
			Status:       int(*r.Status),
			UpdateTime:   t,
			ImageID:      r.ImageID,
			ImageName:    r.ImageName,
			NewImageID:   r.NewImageID,
			NewImageName: r.NewImageName,
			Reason:       r.Reason,
		}
	}
	return p, nil
}

type errorJSON struct {
	RequestID string `json:"RequestId"`
	HostID    string `json:"HostId"`
	Code      string `json:"Code"`
	Message   string `json:"Message"`
	Recommend string `json:"Recommend"`
}

func parseAPIError(resp *http.Response, body []byte) *APIError {
	e := &APIError{HTTPStatus: resp.StatusCode}
	var ej errorJSON
	if json.Unmarshal(body, &ej) == nil {
		e.Code, e.Message, e.RequestID, e.HostID, e.Recommend = ej.Code, ej.Message, ej.RequestID, ej.HostID, ej.Recommend
	} else {
		e.Message = strings.TrimSpace(string(truncate(body, 200)))
	}
	for _, h := range []string{"x-ratelimit-user-api", "x-ratelimit-user"} {
		if v := resp.Header.Get(h); v != "" {
			e.RetryAfter = v
			break
		}
	}
	return e
}

func truncate(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return append(bytes.Clone(b[:n]), "…"...)
}
