package upstream_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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

// FuzzDecodePageMatchesEncodingJSON holds DecodePage to the decoder it
// replaced, referenceDecodePage (encoding/json into tagged structs, then
// the rules of decode.go): for every body both fail, or both give the same
// page, field for field. Its corpus, testdata/fuzz/<this target>, has the
// cases where a hand-written JSON reader is likely to part from
// encoding/json: escapes, invalid UTF-8, key folding, duplicate keys,
// nulls, numbers at and past the limits, wrong types, UpdateTime layouts,
// syntax errors and truncations.
func FuzzDecodePageMatchesEncodingJSON(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		checkMatchesEncodingJSON(t, body)
	})
}

// checkMatchesEncodingJSON decodes body with DecodePage and with
// referenceDecodePage, fails t unless both fail or both give the same page,
// and returns DecodePage's error. It releases the page it compared, so
// that the next pages decoded start from recycled record lists.
func checkMatchesEncodingJSON(t *testing.T, body []byte) error {
	t.Helper()
	want, wantErr := referenceDecodePage(body)
	got, err := upstream.DecodePage(body)
	switch {
	case err != nil && !errors.Is(err, upstream.ErrMalformedResponse):
		t.Fatalf("error %v does not wrap ErrMalformedResponse", err)
	case (err == nil) != (wantErr == nil):
		t.Fatalf("body %s\nDecodePage error: %v\nencoding/json error: %v", clip(string(body)), err, wantErr)
	case err == nil:
		if diff := pageDifference(got, want); diff != "" {
			t.Fatalf("body %s\nDecodePage and encoding/json differ: %s", clip(string(body)), diff)
		}
		got.Release()
	}
	return err
}

// clip quotes s, cut to a length a test failure can show.
func clip(s string) string {
	if len(s) > 300 {
		return fmt.Sprintf("%q… (%d bytes)", s[:300], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// pageDifference describes the first difference of a from b, or returns
// "" for equal pages. Times are equal when they are the same instant in a
// zone of the same name and offset.
func pageDifference(a, b *upstream.Page) string {
	switch {
	case a.RequestID != b.RequestID:
		return fmt.Sprintf("RequestID %s, %s", clip(a.RequestID), clip(b.RequestID))
	case a.TotalCount != b.TotalCount:
		return fmt.Sprintf("TotalCount %d, %d", a.TotalCount, b.TotalCount)
	case a.NextToken != b.NextToken:
		return fmt.Sprintf("NextToken %s, %s", clip(a.NextToken), clip(b.NextToken))
	case a.Resume != b.Resume:
		return fmt.Sprintf("Resume %+v, %+v", a.Resume, b.Resume)
	case len(a.Records) != len(b.Records) || (a.Records == nil) != (b.Records == nil):
		return fmt.Sprintf("%d records (nil %t), %d (nil %t)", len(a.Records), a.Records == nil, len(b.Records), b.Records == nil)
	}
	for i := range a.Records {
		x, y := a.Records[i], b.Records[i]
		xZone, xOffset := x.UpdateTime.Zone()
		yZone, yOffset := y.UpdateTime.Zone()
		if !x.UpdateTime.Equal(y.UpdateTime) || xZone != yZone || xOffset != yOffset {
			return fmt.Sprintf("record %d: UpdateTime %v, %v", i, x.UpdateTime, y.UpdateTime)
		}
		x.UpdateTime, y.UpdateTime = time.Time{}, time.Time{}
		if x != y {
			return fmt.Sprintf("record %d: %s, %s", i, clip(fmt.Sprintf("%+v", x)), clip(fmt.Sprintf("%+v", y)))
		}
	}
	return ""
}

// referenceDecodePage is the decoder DecodePage replaced, kept as the
// reference it must agree with: encoding/json into tagged structs, then
// the rules of decode.go. Its error messages are not DecodePage's.
func referenceDecodePage(body []byte) (*upstream.Page, error) {
	type recordJSON struct {
		Status       *int64 `json:"Status"` // nil: absent or null
		UpdateTime   string `json:"UpdateTime"`
		ImageID      string `json:"ImageId"`
		ImageName    string `json:"ImageName"`
		NewImageID   string `json:"NewImageId"`
		NewImageName string `json:"NewImageName"`
		Reason       string `json:"Reason"`
	}
	type pageJSON struct {
		RequestID            string       `json:"RequestId"`
		TotalCount           int64        `json:"TotalCount"`
		NextToken            string       `json:"NextToken"`
		ImageModifiedRecords []recordJSON `json:"ImageModifiedRecords"`
	}
	if t := bytes.TrimLeft(body, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		// json.Unmarshal would accept null into a struct.
		return nil, fmt.Errorf("%w: not a JSON object", upstream.ErrMalformedResponse)
	}
	// The capacity matters: encoding/json reads an array into the slice's
	// spare capacity, where an earlier duplicate key may have left elements.
	pj := pageJSON{ImageModifiedRecords: make([]recordJSON, 0, upstream.MaxPageSize)}
	if err := json.Unmarshal(body, &pj); err != nil {
		return nil, fmt.Errorf("%w: %v", upstream.ErrMalformedResponse, err)
	}
	switch {
	case pj.RequestID == "":
		return nil, fmt.Errorf("%w: no RequestId", upstream.ErrMalformedResponse)
	case pj.TotalCount < 0 || pj.TotalCount > math.MaxInt32:
		return nil, fmt.Errorf("%w: TotalCount %d", upstream.ErrMalformedResponse, pj.TotalCount)
	case len(pj.NextToken) > upstream.MaxNextTokenLength:
		return nil, fmt.Errorf("%w: NextToken of %d bytes", upstream.ErrMalformedResponse, len(pj.NextToken))
	}
	p := &upstream.Page{
		RequestID:  pj.RequestID,
		TotalCount: int(pj.TotalCount),
		NextToken:  pj.NextToken,
		Records:    make([]upstream.Record, len(pj.ImageModifiedRecords)),
	}
	lo := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	hi := time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
	for i, r := range pj.ImageModifiedRecords {
		if r.Status == nil || *r.Status < math.MinInt32 || *r.Status > math.MaxInt32 {
			return nil, fmt.Errorf("%w: record %d: Status", upstream.ErrMalformedResponse, i)
		}
		var t time.Time
		if r.UpdateTime != "" {
			var err error
			if t, err = time.Parse(time.RFC3339Nano, r.UpdateTime); err != nil || !t.After(lo) || t.After(hi) {
				return nil, fmt.Errorf("%w: record %d: UpdateTime %q", upstream.ErrMalformedResponse, i, r.UpdateTime)
			}
		}
		p.Records[i] = upstream.Record{
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

// FuzzUpdateTimeMatchesTimeParse holds the decoder's reading of an
// UpdateTime to time.Parse(time.RFC3339Nano), through referenceDecodePage:
// the fuzzer mutates the time string alone, so it stays near the
// upstream's layout (2006-01-02T15:04:05.000Z), which the decoder reads
// its own way, and the layouts next to it, which go to time.Parse.
func FuzzUpdateTimeMatchesTimeParse(f *testing.F) {
	for _, seed := range []string{
		"2022-03-03T02:43:44.851Z", "0001-01-01T00:00:00.000Z", "0001-01-01T00:00:00.001Z", "9999-12-31T23:59:59.999Z",
		"2024-02-29T23:59:59.999Z", "2100-02-29T00:00:00.000Z", "2000-02-29T12:00:00.000Z", "1969-12-31T23:59:59.999Z",
		"2022-04-31T00:00:00.000Z", "2022-13-01T00:00:00.000Z", "2022-01-01T24:00:00.000Z", "2022-01-01T00:60:00.000Z",
		"2022-01-01T00:00:60.000Z", "2022-01-01t00:00:00.000z", "2022-01-01T00:00:00.000+08:00", "2022-01-01T00:00:00Z",
		"2022-01-01T00:00:00.1234Z", "+022-01-01T00:00:00.000Z", "2022-0a-01T00:00:00.000Z", "2022-01-01T00:00:00,000Z",
		"2022-0:-01T00:00:00.000Z", "2022-01-01T0/:00:00.000Z", "2022-01-01T00:00:00.00\x00Z", "2022-01-01 00:00:00.000Z",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, updateTime string) {
		quoted, err := json.Marshal(updateTime)
		if err != nil {
			t.Fatal(err)
		}
		checkMatchesEncodingJSON(t, []byte(`{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"UpdateTime":`+string(quoted)+`}]}`))
	})
}
