package upstream_test

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/imagerecords/imagerecords/upstream"
)

// FuzzDecodePage feeds arbitrary bodies to DecodePage. It must never
// panic; every failure must wrap ErrMalformedResponse; and a success must
// be faithful: one record per element of the JSON array, each Status the
// number the JSON holds, every value within what the gateway's protobuf
// fields carry, and encoding the Page back to upstream JSON and decoding
// that again gives the same Page.
func FuzzDecodePage(f *testing.F) {
	for _, seed := range []string{
		`{"RequestId":"R-OK","TotalCount":1,"ImageModifiedRecords":[{"Status":1,"UpdateTime":"2022-03-03T02:43:44.851Z","ImageId":"m-1","ImageName":"镜像 1","NewImageId":"m-2","NewImageName":"镜像 2"}]}`,
		`{"RequestId":"R","TotalCount":3,"NextToken":"AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk","ImageModifiedRecords":[{"Status":0},{"Status":2,"Reason":"disk full","UpdateTime":""},{"Status":7,"UpdateTime":"2022-03-03T10:43:44.851+08:00"}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":-2147483648},{"Status":2147483647}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":2147483648}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":"1"}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":1e3}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":null}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[null]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"UpdateTime":"0001-01-01T00:00:00Z"}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"UpdateTime":"9999-12-31T23:59:59.999999999Z"}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"UpdateTime":"9999-12-31T23:59:59-01:00"}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"ImageName":"a\ud800b","status":3}]}`,
		`{"RequestId":"R","TotalCount":-1}`,
		`{"RequestId":"R","TotalCount":"1"}`,
		`{"RequestId":"R","NextToken":5}`,
		`{"RequestId":"R","ImageModifiedRecords":{}}`,
		`{"RequestId":"R"}`,
		`{"requestid":"r","RequestId":"","totalcount":2}`,
		`{}`, `null`, `[]`, `"x"`, ``, ` `,
		`{"RequestId":"R","ImageModifiedRecords":[`,
	} {
		f.Add([]byte(seed))
	}
	f.Add([]byte("{\"RequestId\":\"R\",\"ImageModifiedRecords\":[{\"Status\":1,\"ImageId\":\"a\xffb\"}]}"))

	f.Fuzz(func(t *testing.T, body []byte) {
		page, err := upstream.DecodePage(body)
		if err != nil {
			if !errors.Is(err, upstream.ErrMalformedResponse) {
				t.Fatalf("error %v (%T) does not wrap ErrMalformedResponse", err, err)
			}
			if page != nil {
				t.Fatalf("a page %+v together with the error %v", page, err)
			}
			return
		}
		checkPageBounds(t, page)

		// One record per array element, each Status as the JSON has it.
		var raw struct {
			ImageModifiedRecords []json.RawMessage
		}
		if err := json.Unmarshal(body, &raw); err != nil {
			t.Fatalf("DecodePage accepted a body encoding/json refuses: %v", err)
		}
		if len(page.Records) != len(raw.ImageModifiedRecords) {
			t.Fatalf("%d records from an array of %d", len(page.Records), len(raw.ImageModifiedRecords))
		}
		for i, rr := range raw.ImageModifiedRecords {
			var st struct{ Status json.Number }
			if err := json.Unmarshal(rr, &st); err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
			n, err := strconv.ParseInt(string(st.Status), 10, 64)
			if err != nil || n != int64(page.Records[i].Status) {
				t.Errorf("record %d: Status %d from JSON %s", i, page.Records[i].Status, st.Status)
			}
		}

		// Back to upstream JSON and again: the same page.
		again, err := upstream.DecodePage(encodeUpstream(t, page))
		if err != nil {
			t.Fatalf("the re-encoded page does not decode: %v", err)
		}
		if !samePage(page, again) {
			t.Fatalf("round trip changed the page:\n%+v\n%+v", page, again)
		}
	})
}

// checkPageBounds asserts what every decoded page must satisfy so that the
// service can convert it without overflow or an unencodable message.
func checkPageBounds(t *testing.T, p *upstream.Page) {
	t.Helper()
	if p.RequestID == "" {
		t.Errorf("a page without RequestId")
	}
	if p.TotalCount < 0 || p.TotalCount > math.MaxInt32 {
		t.Errorf("TotalCount %d outside 0..MaxInt32", p.TotalCount)
	}
	if len(p.NextToken) > upstream.MaxNextTokenLength {
		t.Errorf("NextToken of %d bytes", len(p.NextToken))
	}
	if p.Resume != (upstream.Cursor{}) {
		t.Errorf("Resume %+v set by decoding", p.Resume)
	}
	for _, s := range []string{p.RequestID, p.NextToken} {
		if !utf8.ValidString(s) {
			t.Errorf("invalid UTF-8 %q", s)
		}
	}
	lo := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	hi := time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
	for i, r := range p.Records {
		if r.Status < math.MinInt32 || r.Status > math.MaxInt32 {
			t.Errorf("record %d: Status %d outside int32", i, r.Status)
		}
		if !r.UpdateTime.IsZero() && (!r.UpdateTime.After(lo) || r.UpdateTime.After(hi)) {
			t.Errorf("record %d: UpdateTime %v outside what a Timestamp carries", i, r.UpdateTime)
		}
		for _, s := range []string{r.ImageID, r.ImageName, r.NewImageID, r.NewImageName, r.Reason} {
			if !utf8.ValidString(s) {
				t.Errorf("record %d: invalid UTF-8 %q", i, s)
			}
		}
	}
}

// encodeUpstream writes p as the upstream would, with its field names.
func encodeUpstream(t *testing.T, p *upstream.Page) []byte {
	t.Helper()
	type rec struct {
		Status       int
		UpdateTime   string
		ImageId      string
		ImageName    string
		NewImageId   string
		NewImageName string
		Reason       string
	}
	out := struct {
		RequestId            string
		TotalCount           int
		NextToken            string
		ImageModifiedRecords []rec
	}{RequestId: p.RequestID, TotalCount: p.TotalCount, NextToken: p.NextToken, ImageModifiedRecords: []rec{}}
	for _, r := range p.Records {
		ut := ""
		if !r.UpdateTime.IsZero() {
			ut = r.UpdateTime.Format(time.RFC3339Nano)
		}
		out.ImageModifiedRecords = append(out.ImageModifiedRecords, rec{r.Status, ut, r.ImageID, r.ImageName, r.NewImageID, r.NewImageName, r.Reason})
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatalf("encoding %+v: %v", p, err)
	}
	return b
}

func samePage(a, b *upstream.Page) bool {
	if a.RequestID != b.RequestID || a.TotalCount != b.TotalCount || a.NextToken != b.NextToken || a.Resume != b.Resume || len(a.Records) != len(b.Records) {
		return false
	}
	for i := range a.Records {
		x, y := a.Records[i], b.Records[i]
		if !x.UpdateTime.Equal(y.UpdateTime) || x.UpdateTime.IsZero() != y.UpdateTime.IsZero() {
			return false
		}
		x.UpdateTime, y.UpdateTime = time.Time{}, time.Time{}
		if x != y {
			return false
		}
	}
	return true
}
