package upstream_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
)

// TestDecodePageMatchesEncodingJSONOnLargeBodies holds DecodePage to
// encoding/json (as FuzzDecodePageMatchesEncodingJSON does) on bodies too
// large for a fuzz corpus, and checks the outcome both must have: nesting
// up to encoding/json's limit of 10000 and one past it, more records than
// the decoder makes room for up front, repeated ImageModifiedRecords
// arrays longer than that, and long strings full of escapes.
func TestDecodePageMatchesEncodingJSONOnLargeBodies(t *testing.T) {
	t.Parallel()
	nested := func(open, close string, n int) string {
		return strings.Repeat(open, n) + "1" + strings.Repeat(close, n)
	}
	records := func(n int, format string) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, format, i)
		}
		return "[" + b.String() + "]"
	}
	full := `{"Status":%[1]d,"UpdateTime":"2022-01-01T01:01:40.523Z","ImageId":"m-%[1]d","ImageName":"镜像 %[1]d","NewImageId":"m-n%[1]d","NewImageName":"\u00e9 %[1]d","Reason":"r"}`
	long := strings.Repeat("a\\u00e9\\ud83d\\ude00\\ud800\xff\\n镜", 2000)
	for _, tc := range []struct {
		name    string
		body    string
		wantErr bool
	}{
		// The outer object is depth 1, a record depth 3.
		{"arrays nested 10000 deep", `{"RequestId":"R","X":` + nested("[", "]", 9999) + `}`, false},
		{"arrays nested 10001 deep", `{"RequestId":"R","X":` + nested("[", "]", 10000) + `}`, true},
		{"objects nested 10000 deep in a record", `{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"X":` + nested(`{"a":`, "}", 9997) + `}]}`, false},
		{"objects nested 10001 deep in a record", `{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"X":` + nested(`{"a":`, "}", 9998) + `}]}`, true},
		{"250 records", `{"RequestId":"R","ImageModifiedRecords":` + records(250, full) + `}`, false},
		{"repeated arrays past the room made up front",
			`{"RequestId":"R","ImageModifiedRecords":` + records(150, full) +
				`,"ImageModifiedRecords":` + records(3, `{"Reason":"again %d"}`) +
				`,"ImageModifiedRecords":` + records(120, `{"ImageId":"third %d"}`) + `}`, false},
		{"a record left without Status past the earlier arrays",
			`{"RequestId":"R","ImageModifiedRecords":` + records(150, `{"Status":%d}`) +
				`,"ImageModifiedRecords":` + records(151, `{"Reason":"%d"}`) + `}`, true},
		{"long strings of escapes and invalid UTF-8", `{"RequestId":"` + long + `","ImageModifiedRecords":[{"Status":1,"Reason":"` + long + `"}]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if err := checkMatchesEncodingJSON(t, []byte(tc.body)); (err != nil) != tc.wantErr {
				t.Errorf("error %v, want an error: %t", err, tc.wantErr)
			}
		})
	}
}

// TestDecodePageKeepsNoPartOfTheBody: answer.go recycles body buffers, so
// a page must not change when its body buffer is written over afterwards.
func TestDecodePageKeepsNoPartOfTheBody(t *testing.T) {
	t.Parallel()
	body := []byte(`{"RequestId":"R-1","TotalCount":2,"NextToken":"T-1","ImageModifiedRecords":[` +
		`{"Status":1,"UpdateTime":"2022-03-03T02:43:44.851Z","ImageId":"m-1","ImageName":"镜像 1","NewImageId":"m-2","NewImageName":"n\u00e9","Reason":"disk full"}]}`)
	want, err := upstream.DecodePage(bytes.Clone(body))
	if err != nil {
		t.Fatal(err)
	}
	got, err := upstream.DecodePage(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = 'x'
	}
	if diff := pageDifference(got, want); diff != "" {
		t.Fatalf("the page changed with its body buffer: %s", diff)
	}
}

// TestReleasedRecordsReachNoLaterPage: Release gives a page's record list
// to the next pages decoded. A later page with fewer records and fields
// must read as if its list were new (no Status, time or string of the
// released page in it, also behind a null element or a shorter repeated
// array), and copies taken of the released records must stay as they
// were.
func TestReleasedRecordsReachNoLaterPage(t *testing.T) {
	t.Parallel()
	var full strings.Builder
	full.WriteString(`{"RequestId":"R-full","ImageModifiedRecords":[`)
	for i := range upstream.MaxPageSize {
		if i > 0 {
			full.WriteString(",")
		}
		fmt.Fprintf(&full, `{"Status":%d,"UpdateTime":"2022-03-03T02:43:44.851Z","ImageId":"m-%d","ImageName":"镜像","NewImageId":"n","NewImageName":"é","Reason":"r"}`, i%3, i)
	}
	full.WriteString("]}")
	later := []string{
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":1},null,{"Status":2,"Reason":""}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[{"Status":1},{"Status":1}],"ImageModifiedRecords":[{"ImageId":"x"}]}`,
		`{"RequestId":"R","ImageModifiedRecords":[]}`,
		`{"RequestId":"R","ImageModifiedRecords":[null]}`, // no Status: malformed, as encoding/json has it
	}
	for range 20 { // sync.Pool may drop a list now and then: give it many turns
		page, err := upstream.DecodePage([]byte(full.String()))
		if err != nil {
			t.Fatal(err)
		}
		kept := page.Records[upstream.MaxPageSize-1]
		page.Release()
		if page.Records != nil {
			t.Fatalf("a released page still has %d records", len(page.Records))
		}
		for _, body := range later {
			checkMatchesEncodingJSON(t, []byte(body))
		}
		if kept.ImageID != "m-99" || kept.Reason != "r" || kept.UpdateTime.IsZero() || kept.Status != 0 {
			t.Fatalf("a copy of a released record changed: %+v", kept)
		}
	}
}

// TestDecodePageUpdateTimesMatchTimeParse holds the decoder's short way
// for the upstream's time layout (2006-01-02T15:04:05.000Z) to
// time.Parse, through encoding/json's reference: every day of the years
// where leap rules and the Timestamp range bite and a day in every 61 of
// all the others from year 1 on (year 0 is out of range), each at a time of day that moves with the day, and,
// one body each, the day after each month's last in those years and
// clocks just out of range. checkMatchesEncodingJSON compares the instants
// and the zones' names and offsets, and the test the location itself.
func TestDecodePageUpdateTimesMatchTimeParse(t *testing.T) {
	t.Parallel()
	var valid, invalid []string
	edges := map[int]bool{1: true, 4: true, 100: true, 400: true, 1900: true, 1969: true, 1970: true, 2000: true, 2024: true, 2100: true, 9999: true}
	layout := func(year, month, day, n int) string {
		return fmt.Sprintf("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", year, month, day, n%24, n%60, n/60%60, n%1000)
	}
	for year := 1; year <= 9999; year++ {
		for month := 1; month <= 12; month++ {
			last := time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
			for day := 1; day <= last; day++ {
				if n := (year*12+month)*31 + day; edges[year] || n%61 == 0 {
					valid = append(valid, layout(year, month, day, n))
				}
			}
			if edges[year] {
				invalid = append(invalid, layout(year, month, last+1, year))
			}
		}
	}
	valid = append(valid, "1970-01-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z", "0001-01-01T00:00:00.001Z", "9999-12-31T23:59:59.999Z")
	invalid = append(invalid, "0000-02-29T12:00:00.000Z", "0000-12-31T23:59:59.999Z", "0001-01-01T00:00:00.000Z", "2024-02-29T24:00:00.000Z", "2024-02-29T23:60:00.000Z", "2024-02-29T23:59:60.000Z", "2024-00-10T10:10:10.000Z")
	const perBody = 1000
	for start := 0; start < len(valid); start += perBody {
		var b strings.Builder
		b.WriteString(`{"RequestId":"R","ImageModifiedRecords":[`)
		for i, ut := range valid[start:min(start+perBody, len(valid))] {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `{"Status":1,"UpdateTime":%q}`, ut)
		}
		b.WriteString("]}")
		if err := checkMatchesEncodingJSON(t, []byte(b.String())); err != nil {
			t.Fatalf("times from %s on: %v", valid[start], err)
		}
		// time.Parse gives Z times in time.UTC itself; where Local is UTC
		// too, the comparison above cannot tell the two apart.
		page, err := upstream.DecodePage([]byte(b.String()))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Records {
			if r.UpdateTime.Location() != time.UTC {
				t.Fatalf("UpdateTime %v is in %v, want time.UTC", r.UpdateTime, r.UpdateTime.Location())
			}
		}
	}
	for _, ut := range invalid {
		if checkMatchesEncodingJSON(t, []byte(`{"RequestId":"R","ImageModifiedRecords":[{"Status":1,"UpdateTime":"`+ut+`"}]}`)) == nil {
			t.Errorf("UpdateTime %s was taken", ut)
		}
	}
}
