package service

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/upstream"
)

// recordingAPI records every upstream input and answers each with
// errStopHere, so a request that passes validation ends right after its
// one upstream call (a stream never reaches Send).
type recordingAPI struct{ inputs []upstream.DescribeInput }

var errStopHere = &upstream.APIError{HTTPStatus: 404, Code: "InvalidDesktopId.NotFound", Message: "fuzz stop"}

func (r *recordingAPI) DescribeImageModifiedRecords(_ context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	r.inputs = append(r.inputs, in)
	return nil, errStopHere
}

// Token modes of FuzzValidateRequest.
const (
	tokenRaw       = iota // the fuzzed string as it is
	tokenValid            // a token sealCursor made for this region and desktop
	tokenOtherDesk        // a token sealCursor made for another desktop
	tokenNone             // no token
	tokenModes
)

// FuzzValidateRequest drives both RPCs with arbitrary fields. Either the
// request is refused with InvalidArgument and a BadRequest naming exactly
// the bad fields, and the upstream is never called; or the upstream is
// called exactly once with the caller's region and desktop, a MaxResults
// in 1..100, and the upstream token the page token carries.
func FuzzValidateRequest(f *testing.F) {
	f.Add(false, "cn-hangzhou", "ecd-bd53sfmysz8ir0001", int32(0), int64(0), uint8(tokenNone), "", uint32(0), "")
	f.Add(false, "cn-hangzhou", "ecd-abc", int32(100), int64(0), uint8(tokenValid), "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk", uint32(57), "")
	f.Add(true, "ap-southeast-1", "ecd-abc", int32(0), int64(5), uint8(tokenValid), "", uint32(3), "")
	f.Add(true, "cn-shanghai-finance-1", "ecd-abc", int32(0), int64(-1), uint8(tokenRaw), "", uint32(0), "junk!")
	f.Add(false, "", "", int32(-1), int64(0), uint8(tokenRaw), "", uint32(0), "AQ")
	f.Add(false, "CN-HANGZHOU", "ecd-ABC", int32(101), int64(0), uint8(tokenOtherDesk), "tok", uint32(0), "")
	f.Add(true, "cn-hangzhou", "ecd-abc", int32(0), int64(0), uint8(tokenOtherDesk), "tok", uint32(1), "")
	f.Add(false, "cn-hangzhou", "ecd-abc", int32(7), int64(0), uint8(tokenValid), strings.Repeat("t", upstream.MaxNextTokenLength), uint32(maxSkip-1), "")
	f.Add(false, "cn-hangzhou", "ecd-abc", int32(1), int64(0), uint8(tokenRaw), "", uint32(0), strings.Repeat("A", maxTokenLength+1))
	// The longest region the pattern alone would allow: longer than a DNS
	// label, and than the upstream client accepts.
	f.Add(true, "abcdefghijkl-"+strings.Repeat("a", 24)+"-"+strings.Repeat("b", 24)+"-"+strings.Repeat("c", 24)+"-"+strings.Repeat("d", 24),
		"ecd-abc", int32(0), int64(0), uint8(tokenNone), "", uint32(0), "")
	f.Add(false, "cn-hangzhou\n", "ecd-abc\n", int32(0), int64(0), uint8(tokenNone), "", uint32(0), "")
	f.Add(false, "cn-hangzhou", "ecd-"+strings.Repeat("a", 61), int32(0), int64(0), uint8(tokenNone), "", uint32(0), "")

	f.Fuzz(func(t *testing.T, stream bool, region, desktop string, pageSize int32, maxRecords int64, mode uint8, upToken string, skip uint32, rawToken string) {
		var token string
		var want upstream.Cursor // what a tokenValid token carries
		switch mode % tokenModes {
		case tokenRaw:
			token = rawToken
		case tokenValid:
			want = upstream.Cursor{Token: upToken, Skip: int(skip % maxSkip)}
			token = fuzzKeys.sealCursor(region, desktop, want)
		case tokenOtherDesk:
			token = fuzzKeys.sealCursor(region, desktop+"0", upstream.Cursor{Token: upToken, Skip: int(skip % maxSkip)})
		}

		api := &recordingAPI{}
		s := New(api, WithTokenKeys(fuzzKeys))
		var err error
		if stream {
			// The stream is never used: the upstream call fails first.
			err = s.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: region, DesktopId: desktop, PageToken: token, MaxRecords: maxRecords,
			}), nil)
		} else {
			_, err = s.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
				RegionId: region, DesktopId: desktop, PageToken: token, PageSize: pageSize,
			}))
		}

		// Which fields are bad, by rules written out independently of
		// the validation code.
		bad := map[string]bool{}
		if !plausibleRegion(region) {
			bad["region_id"] = true
		}
		if !plausibleDesktop(desktop) {
			bad["desktop_id"] = true
		}
		if !stream && (pageSize < 0 || pageSize > 100) {
			bad["page_size"] = true
		}
		if stream && maxRecords < 0 {
			bad["max_records"] = true
		}
		// The token is checked only once region and desktop are good.
		tokenChecked := !bad["region_id"] && !bad["desktop_id"]
		tokenBad := map[bool]string{true: "page_token must be refused", false: "page_token must be accepted"}
		var tokenMustBe *bool
		switch m := mode % tokenModes; {
		case !tokenChecked || token == "":
			tokenMustBe = new(false)
		case len(token) > maxTokenLength:
			tokenMustBe = new(true)
		case m == tokenValid:
			tokenMustBe = new(false)
		case m == tokenOtherDesk:
			tokenMustBe = new(true)
		}

		code := connect.CodeOf(err)
		switch code {
		case connect.CodeInvalidArgument:
			if len(api.inputs) != 0 {
				t.Fatalf("refused with %v, yet the upstream was called with %+v", err, api.inputs)
			}
			cerr, ok := errors.AsType[*connect.Error](err)
			if !ok {
				t.Fatalf("error %v is not a *connect.Error", err)
			}
			var br *errdetails.BadRequest
			for _, d := range cerr.Details() {
				if v, _ := d.Value(); v != nil {
					if b, ok := v.(*errdetails.BadRequest); ok {
						br = b
					}
				}
			}
			if len(br.GetFieldViolations()) == 0 {
				t.Fatalf("InvalidArgument %v without a BadRequest naming a field", err)
			}
			named := map[string]bool{}
			for _, fv := range br.GetFieldViolations() {
				if named[fv.GetField()] {
					t.Errorf("field %s named twice", fv.GetField())
				}
				named[fv.GetField()] = true
				if fv.GetDescription() == "" {
					t.Errorf("violation of %s has no description", fv.GetField())
				}
			}
			if first := br.GetFieldViolations()[0].GetField(); !strings.HasPrefix(cerr.Message(), first+": ") {
				t.Errorf("message %q does not start with the first bad field %s", cerr.Message(), first)
			}
			for field := range bad {
				if !named[field] {
					t.Errorf("bad %s (region %q, desktop %q, page_size %d, max_records %d) not named in %v", field, region, desktop, pageSize, maxRecords, br)
				}
			}
			for field := range named {
				switch {
				case field == "page_token":
					if tokenMustBe != nil && !*tokenMustBe {
						t.Errorf("%s, yet named: %v (token %q)", tokenBad[false], br, token)
					}
				case !bad[field]:
					t.Errorf("good %s named: %v (region %q, desktop %q, page_size %d, max_records %d)", field, br, region, desktop, pageSize, maxRecords)
				}
			}
			if tokenMustBe != nil && *tokenMustBe && !named["page_token"] {
				t.Errorf("%s: %v (token %q)", tokenBad[true], br, token)
			}
		case connect.CodeNotFound: // errStopHere, mapped
			if len(bad) != 0 {
				t.Fatalf("fields %v are bad, yet the request reached the upstream", bad)
			}
			if tokenMustBe != nil && *tokenMustBe {
				t.Fatalf("%s, yet the request reached the upstream (token %q)", tokenBad[true], token)
			}
			if len(api.inputs) != 1 {
				t.Fatalf("%d upstream calls, want 1", len(api.inputs))
			}
			in := api.inputs[0]
			if in.RegionID != region || in.DesktopID != desktop {
				t.Errorf("upstream asked for %q/%q, want %q/%q", in.RegionID, in.DesktopID, region, desktop)
			}
			if in.MaxResults < 1 || in.MaxResults > upstream.MaxPageSize {
				t.Errorf("MaxResults %d outside 1..%d", in.MaxResults, upstream.MaxPageSize)
			}
			if stream && in.MaxResults != upstream.MaxPageSize {
				t.Errorf("a stream asked for %d records per page, want %d", in.MaxResults, upstream.MaxPageSize)
			}
			// The region becomes a DNS label of the endpoint host.
			if len(in.RegionID) > 63 || strings.Trim(in.RegionID, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
				t.Errorf("region %q reached the upstream, but cannot be a host-name label", in.RegionID)
			}
			if mode%tokenModes == tokenValid && tokenChecked {
				if in.NextToken != want.Token {
					t.Errorf("upstream NextToken %q, want the token's %q", in.NextToken, want.Token)
				}
				size := int(pageSize)
				if size == 0 {
					size = upstream.DefaultPageSize
				}
				if !stream && in.MaxResults != min(size+want.Skip, upstream.MaxPageSize) {
					t.Errorf("MaxResults %d, want min(page_size %d + skip %d, 100)", in.MaxResults, size, want.Skip)
				}
			}
			if mode%tokenModes == tokenNone && in.NextToken != "" {
				t.Errorf("no page_token, yet upstream NextToken %q", in.NextToken)
			}
		default:
			t.Fatalf("error %v (code %v), want InvalidArgument or the upstream's NotFound", err, code)
		}
	})
}

// plausibleRegion is the documented region-id shape, written out by hand:
// 2 to 12 lower-case letters, then 1 to 4 parts of a dash and 1 to 24
// lower-case letters or digits, at most 63 bytes in all (a DNS label).
func plausibleRegion(r string) bool {
	if len(r) > 63 {
		return false
	}
	parts := strings.Split(r, "-")
	if len(parts) < 2 || len(parts) > 5 {
		return false
	}
	for i, p := range parts {
		lo, hi := 1, 24
		if i == 0 {
			lo, hi = 2, 12
		}
		if len(p) < lo || len(p) > hi {
			return false
		}
		for _, c := range []byte(p) {
			letter := 'a' <= c && c <= 'z'
			digit := '0' <= c && c <= '9'
			if !letter && (i == 0 || !digit) {
				return false
			}
		}
	}
	return true
}

// plausibleDesktop is "ecd-" and 1 to 60 lower-case letters or digits.
func plausibleDesktop(d string) bool {
	rest, ok := strings.CutPrefix(d, "ecd-")
	if !ok || len(rest) < 1 || len(rest) > 60 {
		return false
	}
	for _, c := range []byte(rest) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
