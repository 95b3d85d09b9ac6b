package upstream

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// What a successful answer must look like. The rules below are deliberate;
// each says why it fails the answer ([ErrMalformedResponse]) or tolerates
// it. Failing is always recoverable (a stream ends with an Internal error
// and the caller resumes from the last resume token it received), while
// tolerating something wrong can hand callers wrong data or end a stream
// early without anyone noticing, so the rules fail whatever would be
// silently misreported and tolerate only what loses nothing.
//
// The decoder is written for this one shape of answer, for speed (a
// quarter of the gateway's CPU went to encoding/json here), and reads JSON
// the way encoding/json's Unmarshal into tagged structs did, the decoder
// it replaced: FuzzDecodePageMatchesEncodingJSON holds it to that, body
// for body, so every outcome below is the one encoding/json gave.
//
//   - The body is one JSON object and nothing after it. null, [], "x",
//     truncated JSON (cut anywhere), trailing garbage, anything that is not
//     RFC 8259 JSON and objects or arrays nested more than 10000 deep are
//     malformed, also inside fields this client ignores.
//   - RequestId is required and non-empty: every Alibaba Cloud answer, success
//     or error, carries one. A body without it ({} included) is not an ECD
//     answer (a misconfigured proxy, a placeholder); taking it for an empty
//     last page would end a stream early and quietly lose the rest.
//   - Wrong JSON types are malformed, field by field: Status, TotalCount not
//     integers (strings, booleans, 1.5 and also 1e3: an integer field takes
//     only what strconv.ParseInt does, so numbers beyond the int64 range
//     fail too), NextToken or a record's string fields not strings,
//     ImageModifiedRecords not an array, a record not an object (a null
//     record has no Status, see below). JSON null is the exception for
//     string fields, TotalCount and ImageModifiedRecords: it leaves them
//     empty, which is what the upstream means by null (RequestId must
//     still be there; a string or TotalCount keeps what an earlier
//     duplicate key gave it, and ImageModifiedRecords: null empties the
//     list). Fields this client does not know are ignored,
//     whatever their value (the upstream may add some). Keys match fields
//     case-insensitively, by Unicode simple case folding (so "ſtatus",
//     with a long s, is Status, and the Kelvin sign is a k), after their
//     escapes are decoded. The last of duplicate keys wins; a repeated
//     ImageModifiedRecords reads its elements over those of the earlier
//     one, index by index, as encoding/json reads an array into a slice.
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
//   - Strings come out decoded (\u00e9, surrogate pairs, \/ and the other
//     escapes) and valid UTF-8: each invalid byte and each lone surrogate
//     becomes U+FFFD, which protobuf string fields require.
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

// DecodePage parses a successful DescribeImageModifiedRecords body. Every
// error wraps [ErrMalformedResponse]; see the rules in decode.go.
func DecodePage(body []byte) (*Page, error) { return decodePage(body) }

func decodePage(body []byte) (*Page, error) {
	// The decoder reads the caller's (pooled) buffer in place, as a string
	// that lives no longer than this call: every string the page keeps is
	// copied out of it by detach, into one block of just those strings
	// (half the body: no keys, no punctuation, no times), and errors copy
	// what they quote. A page in flight holds that block, not the body.
	d := pageDecoder{s: unsafe.String(unsafe.SliceData(body), len(body)), b: body}
	var wp wirePage
	defer wp.recycle() // what the page keeps is taken out first
	if err := d.page(&wp); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedResponse, err)
	}
	switch {
	case wp.requestID == "":
		return nil, fmt.Errorf("%w: no RequestId: not an ECD answer", ErrMalformedResponse)
	case wp.totalCount < 0 || wp.totalCount > math.MaxInt32:
		return nil, fmt.Errorf("%w: TotalCount %d outside 0..%d", ErrMalformedResponse, wp.totalCount, math.MaxInt32)
	case len(wp.nextToken) > MaxNextTokenLength:
		return nil, fmt.Errorf("%w: NextToken of %d bytes, more than %d", ErrMalformedResponse, len(wp.nextToken), MaxNextTokenLength)
	}
	// The list's spare capacity may hold elements of an earlier, longer
	// ImageModifiedRecords array: the page does not reach them.
	records, pending := wp.records[:wp.n:wp.n], wp.pending[:wp.n]
	if records == nil {
		records = []Record{} // as encoding/json, not nil
	}
	for i, x := range pending {
		switch {
		case !x.hasStatus:
			return nil, fmt.Errorf("%w: record %d has no Status", ErrMalformedResponse, i)
		case x.status < math.MinInt32 || x.status > math.MaxInt32:
			return nil, fmt.Errorf("%w: record %d: Status %d outside the int32 range", ErrMalformedResponse, i, x.status)
		}
		records[i].Status = int(x.status)
		if ut := x.texts[textUpdateTime].value(d.s, x.updateTime); ut != "" {
			t, err := parseUpdateTime(ut)
			if err != nil {
				return nil, fmt.Errorf("%w: record %d: UpdateTime %q is not RFC 3339", ErrMalformedResponse, i, truncate([]byte(ut), 64))
			}
			if !t.After(minUpdateTime) || t.After(maxUpdateTime) {
				return nil, fmt.Errorf("%w: record %d: UpdateTime %q outside 0001-01-01..9999-12-31 UTC", ErrMalformedResponse, i, truncate([]byte(ut), 64))
			}
			records[i].UpdateTime = t
		}
	}
	page := &Page{
		RequestID:  wp.requestID,
		TotalCount: int(wp.totalCount),
		NextToken:  wp.nextToken,
		Records:    records,
	}
	if wp.n > 0 {
		page.list, wp.recordList = wp.recordList, nil // the page's now
	}
	page.detach(pending, d.s)
	return page, nil
}

// Full pages' lists of records and of pending records come from pools:
// at fan-in the two were a fifth of the bytes the gateway allocated per
// page. A pending list goes back once its page is judged, a record list
// with [Page.Release]. A pooled list has room for a full page and is zero
// all through, spare capacity included, as the decoder requires.
var (
	recordLists  = sync.Pool{New: func() any { l := make([]Record, 0, MaxPageSize); return &l }}
	pendingLists = sync.Pool{New: func() any { l := make([]pendingRecord, 0, MaxPageSize); return &l }}
)

// recycleList zeroes the list l came with from pool, and gives it back.
func recycleList[T any](pool *sync.Pool, l *[]T) {
	clear((*l)[:MaxPageSize])
	pool.Put(l)
}

// Release gives the page's list of records back to be reused by a later
// page. Calling it is optional (an unreleased list is garbage collected);
// once it is called, the page's Records are gone and the caller must keep
// no element of them, nor a pointer into them (copies of records and
// their strings stay valid). A page whose records were all skipped, or
// that never had any, has nothing to release.
func (p *Page) Release() {
	if p.list != nil {
		recycleList(&recordLists, p.list)
		p.list, p.Records = nil, nil
	}
}

// detach copies every string of the page out of the body the page was
// decoded from: the records' strings into one block, which lives as long
// as the records, and RequestId and NextToken apart, since they outlive
// the records (Pages remembers every NextToken of a sequence, a span or a
// log line may keep a RequestId): sharing the block would keep every
// page's records alive as long as its token. pending holds where in body
// each record's strings are (see [fieldText]).
func (p *Page) detach(pending []pendingRecord, body string) {
	p.RequestID = strings.Clone(p.RequestID)
	p.NextToken = strings.Clone(p.NextToken)
	n := 0
	for i := range p.Records {
		r, t := &p.Records[i], &pending[i].texts
		n += len(t[textImageID].value(body, r.ImageID)) + len(t[textImageName].value(body, r.ImageName)) +
			len(t[textNewImageID].value(body, r.NewImageID)) + len(t[textNewImageName].value(body, r.NewImageName)) +
			len(t[textReason].value(body, r.Reason))
	}
	var block strings.Builder
	block.Grow(n)
	for i := range p.Records {
		r, t := &p.Records[i], &pending[i].texts
		r.ImageID = copyInto(&block, t[textImageID].value(body, r.ImageID))
		r.ImageName = copyInto(&block, t[textImageName].value(body, r.ImageName))
		r.NewImageID = copyInto(&block, t[textNewImageID].value(body, r.NewImageID))
		r.NewImageName = copyInto(&block, t[textNewImageName].value(body, r.NewImageName))
		r.Reason = copyInto(&block, t[textReason].value(body, r.Reason))
	}
}

// copyInto appends s to block and returns the copy. The copy stays where
// it is: block was made large enough for all it takes up front, so it
// never moves what it holds, and a Builder never changes bytes it has
// written.
func copyInto(block *strings.Builder, s string) string {
	start := block.Len()
	block.WriteString(s)
	return block.String()[start:]
}

// wirePage is what a body says, before the rules judge it: with duplicate
// keys the last one wins, so a value is judged only once the whole body is
// read.
type wirePage struct {
	requestID  string
	totalCount int64
	nextToken  string
	// records and pending hold the elements of ImageModifiedRecords, the
	// same index in both: decoded strings in records, the rest, where the
	// other strings are in the body included, in pending.
	// They keep every element that an array has filled in since the list
	// was last emptied, and n is the length of the list: the two differ
	// after a duplicate ImageModifiedRecords key with a shorter array (see
	// [pageDecoder.records]). Their spare capacity is all zero.
	records []Record
	pending []pendingRecord
	n       int
	// recordList and pendingList are the pooled lists records and pending
	// began as; nil when the body had no array, or once given away.
	recordList  *[]Record
	pendingList *[]pendingRecord
}

// recycle returns the pooled lists p still holds to their pools. (When
// more records than a full page made the decoder move a list to a larger
// array, the pooled one is no longer the list's and is free all the same.)
func (p *wirePage) recycle() {
	if p.recordList != nil {
		recycleList(&recordLists, p.recordList)
	}
	if p.pendingList != nil {
		recycleList(&pendingLists, p.pendingList)
	}
	p.recordList, p.pendingList = nil, nil
}

// pendingRecord is what the rules judge of a record, Status and
// UpdateTime as the body says them, and where the record's strings are.
type pendingRecord struct {
	status    int64
	hasStatus bool // false: absent or null
	// texts are the string fields, by their text* index. A decoded
	// (escaped) UpdateTime is held in updateTime, the other decoded
	// strings in the record's own fields.
	texts      [textFields]fieldText
	updateTime string
}

// Indexes of a record's string fields in pendingRecord.texts.
const (
	textUpdateTime = iota
	textImageID
	textImageName
	textNewImageID
	textNewImageName
	textReason
	textFields // how many there are
)

// fieldText is where the value of a string field is: the offsets of its
// text in the body, from start to end, when the text is its value (no
// escapes, valid UTF-8: the usual case). A start of -1 means the value was
// decoded, and is held apart. The zero fieldText is the empty string.
// Offsets instead of strings spare the decoder a pointer write per field
// (each a write barrier while the GC marks); detach writes each string of
// a record once, pointing into the page's block.
type fieldText struct{ start, end int }

// decodedText is the fieldText of a decoded value.
var decodedText = fieldText{start: -1}

// value returns the field's value: its text in body, or held, the value
// held apart.
func (t fieldText) value(body, held string) string {
	if t.start < 0 {
		return held
	}
	return body[t.start:t.end]
}

// Keys of the page and of a record, in the upstream's spelling.
const (
	keyRequestID = iota
	keyTotalCount
	keyNextToken
	keyImageModifiedRecords
)

var (
	pageKeys       = []string{"RequestId", "TotalCount", "NextToken", "ImageModifiedRecords"}
	quotedPageKeys = quoteKeys(pageKeys)
)

const (
	keyStatus = iota
	keyUpdateTime
	keyImageID
	keyImageName
	keyNewImageID
	keyNewImageName
	keyReason
)

var (
	recordKeys       = []string{"Status", "UpdateTime", "ImageId", "ImageName", "NewImageId", "NewImageName", "Reason"}
	quotedRecordKeys = quoteKeys(recordKeys)
)

// quotedKey is a key as JSON text followed by a colon, with its first and
// last eight bytes as words, to compare the body with.
type quotedKey struct {
	text       string
	head, tail uint64 // the first and the last 8 bytes of text, read little-endian
}

// quoteKeys returns each of keys quoted and followed by a colon.
func quoteKeys(keys []string) []quotedKey {
	quoted := make([]quotedKey, len(keys))
	for i, k := range keys {
		text := `"` + k + `":` // 9 bytes at least: no key is shorter than 6
		quoted[i] = quotedKey{
			text: text,
			head: binary.LittleEndian.Uint64([]byte(text)),
			tail: binary.LittleEndian.Uint64([]byte(text[len(text)-8:])),
		}
	}
	return quoted
}

// startsWith reports whether the body has q.text at offset i. A text of
// at most 16 bytes is two words, which may overlap.
func (d *pageDecoder) startsWith(i int, q *quotedKey) bool {
	n := len(q.text)
	if n > 16 || len(d.b)-i < n {
		return strings.HasPrefix(d.s[i:], q.text)
	}
	return binary.LittleEndian.Uint64(d.b[i:]) == q.head && binary.LittleEndian.Uint64(d.b[i+n-8:]) == q.tail
}

// matchKey returns the index in keys of the field a JSON key names, or -1
// for a key this client does not know. A key names a field when the two
// are equal once every rune of each is replaced by the smallest rune of
// its Unicode simple case-folding orbit, as encoding/json matches keys to
// struct fields: "requestid" and "REQUESTID" name RequestId, and so does
// a key spelling the s of "Status" as U+017F (ſ) or the k of a name as
// U+212A (the Kelvin sign).
func matchKey(key string, keys []string) int {
	for i, k := range keys {
		if key == k {
			return i
		}
	}
	for i, k := range keys {
		if sameFolded(key, k) {
			return i
		}
	}
	return -1
}

// sameFolded reports whether key and the ASCII name fold to the same
// string. Ranging over key reads invalid UTF-8 as U+FFFD, which folds to
// nothing but itself.
func sameFolded(key, name string) bool {
	if len(key) < len(name) { // a rune is at least one byte
		return false
	}
	i := 0
	for _, r := range key {
		if i == len(name) || foldRune(r) != foldRune(rune(name[i])) {
			return false
		}
		i++
	}
	return i == len(name)
}

// foldRune returns the smallest rune of r's simple case-folding orbit.
func foldRune(r rune) rune {
	if r < utf8.RuneSelf {
		if 'a' <= r && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}
	least := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		least = min(least, f)
	}
	return least
}

// maxNestingDepth is how deep objects and arrays may nest, the outer
// object counting 1: encoding/json's limit.
const maxNestingDepth = 10000

// pageDecoder reads the JSON of one body in a single pass: it checks the
// syntax of everything (RFC 8259, as encoding/json does) and decodes the
// fields of a page into a wirePage. A value of the wrong JSON type for its
// field fails at once, as it fails encoding/json's Unmarshal however the
// rest of the body reads.
type pageDecoder struct {
	s string // the body
	b []byte // the body, for reading it a word at a time
	i int    // the offset of the next byte to read
}

// page reads the body: one object and nothing after it but whitespace.
func (d *pageDecoder) page(p *wirePage) error {
	d.space()
	if d.peek() != '{' {
		return fmt.Errorf("body is not a JSON object: %q", truncate([]byte(d.s[d.i:min(len(d.s), d.i+41)]), 40))
	}
	err := d.object(pageKeys, quotedPageKeys, func(field int) error {
		switch field {
		case keyRequestID:
			return d.stringField(&p.requestID, "RequestId")
		case keyTotalCount:
			_, err := d.integerField(&p.totalCount, "TotalCount")
			return err
		case keyNextToken:
			return d.stringField(&p.nextToken, "NextToken")
		case keyImageModifiedRecords:
			return d.records(p)
		}
		return d.skip(2)
	})
	if err != nil {
		return err
	}
	d.space()
	if d.i != len(d.s) {
		return d.syntaxError("data after the object")
	}
	return nil
}

// records reads the value of ImageModifiedRecords the way encoding/json
// reads an array into a slice that may already hold elements: element i
// is read into the list's element i, over what an earlier
// ImageModifiedRecords key may have left there (also past the current
// length, up to the longest array seen), and the list is cut to the
// array's length. An empty array and null empty the list: what earlier
// arrays left is gone.
func (d *pageDecoder) records(p *wirePage) error {
	switch d.peek() {
	case 'n':
		if err := d.literal("null"); err != nil {
			return err
		}
		p.empty()
		return nil
	case '[':
	default:
		return d.typeError("ImageModifiedRecords", "an array")
	}
	if p.records == nil { // room for a full page up front
		p.recordList, p.pendingList = recordLists.Get().(*[]Record), pendingLists.Get().(*[]pendingRecord)
		p.records, p.pending = *p.recordList, *p.pendingList
	}
	// The loop of list, written out: a record costs no call through a
	// func value.
	n := 0
	for more := d.open(']'); more; {
		if n == len(p.records) {
			p.records, p.pending = extend(p.records), extend(p.pending)
		}
		r, x := &p.records[n], &p.pending[n]
		n++
		var err error
		switch d.peek() {
		case 'n': // null leaves the element as it is
			err = d.literal("null")
		case '{':
			err = d.record(r, x)
		default:
			err = d.typeError(fmt.Sprintf("record %d", n-1), "an object")
		}
		if err != nil {
			return err
		}
		if more, err = d.next(']'); err != nil {
			return err
		}
	}
	if n == 0 {
		p.empty()
	}
	p.n = n
	return nil
}

// empty empties the list of records for good, and zeroes what it held so
// that all spare capacity is zero.
func (p *wirePage) empty() {
	clear(p.records)
	clear(p.pending)
	p.records, p.pending, p.n = p.records[:0], p.pending[:0], 0
}

// extend returns s with one more element, zero. Taking the spare capacity
// without writing it relies on its being zero.
func extend[T any](s []T) []T {
	if len(s) < cap(s) {
		return s[:len(s)+1]
	}
	var zero T
	return append(s, zero)
}

// record reads one element of ImageModifiedRecords into r and x.
func (d *pageDecoder) record(r *Record, x *pendingRecord) error {
	// The loop of object, written out: a field costs no call through a
	// func value, and the key the upstream sends next, in the order it
	// always sends them, is tried first.
	guess := 0
	for more := d.open('}'); more; {
		k, err := d.key(recordKeys, quotedRecordKeys, guess)
		if err != nil {
			return err
		}
		switch k {
		case keyStatus:
			x.hasStatus, err = d.integerField(&x.status, "Status")
		case keyUpdateTime:
			err = d.textField(&x.texts[textUpdateTime], &x.updateTime, "UpdateTime")
		case keyImageID:
			err = d.textField(&x.texts[textImageID], &r.ImageID, "ImageId")
		case keyImageName:
			err = d.textField(&x.texts[textImageName], &r.ImageName, "ImageName")
		case keyNewImageID:
			err = d.textField(&x.texts[textNewImageID], &r.NewImageID, "NewImageId")
		case keyNewImageName:
			err = d.textField(&x.texts[textNewImageName], &r.NewImageName, "NewImageName")
		case keyReason:
			err = d.textField(&x.texts[textReason], &r.Reason, "Reason")
		default:
			err = d.skip(4)
		}
		if err != nil {
			return err
		}
		guess = k + 1
		if more, err = d.next('}'); err != nil {
			return err
		}
	}
	return nil
}

// key reads a key of an object and the colon after it, and returns the
// index in keys of the field it names (see matchKey), or -1. quoted holds
// each of keys quoted and followed by a colon; guess is the index of the
// key that most likely comes, which is tried as it stands first: a key
// that is exactly that text can only be that field.
func (d *pageDecoder) key(keys []string, quoted []quotedKey, guess int) (int, error) {
	if guess >= 0 && guess < len(quoted) && d.startsWith(d.i, &quoted[guess]) {
		d.i += len(quoted[guess].text)
		d.space()
		return guess, nil
	}
	if d.peek() != '"' {
		return 0, d.syntaxError("want a key")
	}
	key, err := d.str()
	if err != nil {
		return 0, err
	}
	d.space()
	if d.peek() != ':' {
		return 0, d.syntaxError("want a colon")
	}
	d.i++
	d.space()
	return matchKey(key, keys), nil
}

// open reads the opening byte of an object or array and the whitespace
// after it, and reports whether an item follows: if not, it has read the
// closing byte end too.
func (d *pageDecoder) open(end byte) (more bool) {
	d.i++ // { or [
	d.space()
	if d.peek() == end {
		d.i++
		return false
	}
	return true
}

// next reads what follows an item of an object or array, up to the next
// item, and reports whether there is one: a comma and whitespace (true),
// or the closing byte end (false).
func (d *pageDecoder) next(end byte) (more bool, err error) {
	d.space()
	switch d.peek() {
	case ',':
		d.i++
		d.space()
		return true, nil
	case end:
		d.i++
		return false, nil
	}
	return false, d.syntaxError("want a comma or " + string(end))
}

// stringField reads a string into dst. null leaves dst as it is.
func (d *pageDecoder) stringField(dst *string, name string) error {
	switch d.peek() {
	case '"':
		s, err := d.str()
		*dst = s
		return err
	case 'n':
		return d.literal("null")
	}
	return d.typeError(name, "a string")
}

// textField reads a string of a record: where its text is into t, or, if
// the value had to be decoded, that into held (t says so). null leaves
// both as they are.
func (d *pageDecoder) textField(t *fieldText, held *string, name string) error {
	switch d.peek() {
	case '"':
		start := d.i + 1
		s, inBody, err := d.text()
		if err != nil {
			return err
		}
		if inBody {
			*t = fieldText{start, d.i - 1}
		} else {
			*t, *held = decodedText, s
		}
		return nil
	case 'n':
		return d.literal("null")
	}
	return d.typeError(name, "a string")
}

// integerField reads an integer into dst and reports whether the value was
// one: null leaves dst as it is and reports false. Like encoding/json for
// an int64 field it takes only what strconv.ParseInt does, so 1.5, 1e3 and
// numbers beyond the int64 range fail.
func (d *pageDecoder) integerField(dst *int64, name string) (bool, error) {
	switch c := d.peek(); {
	case c == '-' || '0' <= c && c <= '9':
		text, err := d.number()
		if err != nil {
			return false, err
		}
		n, ok := shortInteger(text)
		if !ok {
			if n, err = strconv.ParseInt(text, 10, 64); err != nil {
				return false, fmt.Errorf("%s %s is not a 64-bit integer", name, text)
			}
		}
		*dst = n
		return true, nil
	case c == 'n':
		return false, d.literal("null")
	}
	return false, d.typeError(name, "an integer")
}

// shortInteger returns the number that text, a JSON number, spells, if
// it is an integer of at most 18 digits (which cannot overflow), as
// strconv.ParseInt would; ok is false for any other text.
func shortInteger(text string) (n int64, ok bool) {
	digits := strings.TrimPrefix(text, "-")
	if len(digits) > 18 {
		return 0, false
	}
	for i := range len(digits) {
		c := digits[i] - '0'
		if c > 9 {
			return 0, false
		}
		n = n*10 + int64(c)
	}
	if len(digits) < len(text) {
		n = -n
	}
	return n, true
}

// skip reads any one value. depth is the nesting depth an object or array
// there has.
func (d *pageDecoder) skip(depth int) error {
	switch c := d.peek(); {
	case c == '{' || c == '[':
		if depth > maxNestingDepth {
			return d.syntaxError("nested too deep")
		}
		if c == '[' {
			return d.array(func() error { return d.skip(depth + 1) })
		}
		return d.object(nil, nil, func(int) error { return d.skip(depth + 1) })
	case c == '"':
		_, err := d.str()
		return err
	case c == '-' || '0' <= c && c <= '9':
		_, err := d.number()
		return err
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	}
	return d.syntaxError("want a value")
}

// object reads an object, calling member with each key's field (its
// index in keys, or -1: see key) when the offset is at the key's value;
// member must read the value. quoted holds each of keys quoted and
// followed by a colon.
func (d *pageDecoder) object(keys []string, quoted []quotedKey, member func(field int) error) error {
	guess := 0 // the key after the last one, in the order of keys
	for more := d.open('}'); more; {
		field, err := d.key(keys, quoted, guess)
		if err != nil {
			return err
		}
		if err := member(field); err != nil {
			return err
		}
		guess = field + 1
		if more, err = d.next('}'); err != nil {
			return err
		}
	}
	return nil
}

// array reads an array, calling element when the offset is at each
// element; element must read it.
func (d *pageDecoder) array(element func() error) error {
	return d.list(']', element)
}

// list reads what objects and arrays share: the opening byte, then items
// separated by commas up to the closing byte end. item reads one item.
func (d *pageDecoder) list(end byte, item func() error) error {
	for more := d.open(end); more; {
		if err := item(); err != nil {
			return err
		}
		var err error
		if more, err = d.next(end); err != nil {
			return err
		}
	}
	return nil
}

// str reads a string and returns its value. Without escapes and with valid
// UTF-8 (the usual case) the value is a substring of the body; otherwise it
// is decoded by unescape.
func (d *pageDecoder) str() (string, error) {
	s, _, err := d.text()
	return s, err
}

// text is str, and also reports whether the value is the string's text in
// the body, as it stands.
func (d *pageDecoder) text() (value string, inBody bool, err error) {
	start := d.i + 1 // after the quote
	// Up to the first quote, backslash or control character (the closing
	// quote in the usual case), eight bytes at a time, noting whether any
	// byte on the way is not ASCII. Only strings need the UTF-8 check: a
	// byte of 0x80 or more anywhere else is a syntax error.
	s, b, i := d.s, d.b, start
	var high uint64 // the high bits of the bytes read
	for ; i+8 <= len(b); i += 8 {
		w := binary.LittleEndian.Uint64(b[i:])
		if m := stringStops(w); m != 0 {
			n := bits.TrailingZeros64(m) / 8
			high |= w & (1<<(8*n) - 1)
			i += n
			break
		}
		high |= w
	}
	if i+8 > len(b) { // the last bytes of the body, one at a time
		for i < len(s) && plainByte[s[i]] {
			high |= uint64(s[i])
			i++
		}
	}
	if i < len(s) && s[i] == '"' {
		d.i = i + 1
		if text := s[start:i]; high&highBits == 0 || utf8.ValidString(text) {
			return text, true, nil
		}
		return unescape(s[start:i]), false, nil
	}
	// A string with escapes, or no end.
	for i := start; i < len(d.s); {
		switch c := d.s[i]; {
		case c == '"':
			d.i = i + 1
			return unescape(d.s[start:i]), false, nil
		case c == '\\' && i+1 < len(d.s):
			switch d.s[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d.s) || !isHex4(d.s[i+2:i+6]) {
					d.i = i
					return "", false, d.syntaxError("invalid \\u escape")
				}
				i += 6
			default:
				d.i = i
				return "", false, d.syntaxError("invalid escape")
			}
		case c < ' ':
			d.i = i
			return "", false, d.syntaxError("control character in a string")
		default:
			i++
		}
	}
	d.i = len(d.s)
	return "", false, d.syntaxError("unterminated string")
}

// highBits are the high bits of the eight bytes of a word.
const highBits = 0x8080808080808080

// stringStops returns w, eight bytes of a string read little-endian, with
// the high bit set in the first byte that ends a plain run of the string:
// a quote, a backslash or a control character (the bits above it may be
// set or not, so only the lowest set bit counts). Bytes of 0x80 and more
// never stop it. It is 0 when all eight bytes are plain.
func stringStops(w uint64) uint64 {
	const ones = 0x0101010101010101
	quote, backslash := w^(ones*'"'), w^(ones*'\\')
	// A byte below b minus b borrows into its high bit; the borrow
	// may spill into the bytes above, which the lowest bit ignores.
	return ((w - ones*' ') | (quote - ones) | (backslash - ones)) &^ w & highBits
}

// plainByte tells the bytes that stand for themselves in a JSON string:
// all from the space on but the quote and the backslash.
var plainByte = func() (t [256]bool) {
	for c := ' '; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex4(s string) bool {
	for i := range 4 {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// unescape decodes the text of a string whose syntax str has checked, as
// encoding/json does: escapes decoded, a \u surrogate pair joined into
// one rune, and a lone surrogate and each byte of invalid UTF-8 turned
// into U+FFFD.
func unescape(text string) string {
	var b strings.Builder
	b.Grow(len(text))
	for i := 0; i < len(text); {
		c := text[i]
		switch {
		case c == '\\' && text[i+1] == 'u':
			r := hex4(text[i+2:])
			i += 6
			if utf16.IsSurrogate(r) {
				// The pair's second half, if an escape follows; if not,
				// or if the two are no pair, r is a lone surrogate.
				second := rune(-1)
				if i+6 <= len(text) && text[i] == '\\' && text[i+1] == 'u' {
					second = hex4(text[i+2:])
				}
				if r = utf16.DecodeRune(r, second); r != utf8.RuneError {
					i += 6
				}
			}
			b.WriteRune(r)
		case c == '\\':
			b.WriteByte(unescapedByte[text[i+1]])
			i += 2
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, n := utf8.DecodeRuneInString(text[i:])
			b.WriteRune(r) // utf8.RuneError for an invalid byte (n == 1)
			i += n
		}
	}
	return b.String()
}

// unescapedByte maps the letter of a one-letter escape to its byte.
var unescapedByte = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// hex4 returns the number of the four hex digits that s starts with (str
// has checked them).
func hex4(s string) rune {
	var r rune
	for _, c := range []byte(s[:4]) {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// number reads a number and returns its text: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *pageDecoder) number() (string, error) {
	start := d.i
	if d.peek() == '-' {
		d.i++
	}
	switch c := d.peek(); {
	case c == '0':
		d.i++
	case '1' <= c && c <= '9':
		d.digits()
	default:
		return "", d.syntaxError("want a digit")
	}
	if d.peek() == '.' {
		d.i++
		if !d.digits() {
			return "", d.syntaxError("want a digit after the decimal point")
		}
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.i++
		if c := d.peek(); c == '+' || c == '-' {
			d.i++
		}
		if !d.digits() {
			return "", d.syntaxError("want a digit in the exponent")
		}
	}
	return d.s[start:d.i], nil
}

// digits reads a run of decimal digits and reports whether there was one.
func (d *pageDecoder) digits() bool {
	start := d.i
	for d.i < len(d.s) && '0' <= d.s[d.i] && d.s[d.i] <= '9' {
		d.i++
	}
	return d.i > start
}

// literal reads the literal word (true, false or null).
func (d *pageDecoder) literal(word string) error {
	if !strings.HasPrefix(d.s[d.i:], word) {
		return d.syntaxError("want " + word)
	}
	d.i += len(word)
	return nil
}

// space skips JSON whitespace.
func (d *pageDecoder) space() {
	for d.i < len(d.s) {
		if c := d.s[d.i]; c > ' ' || c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return
		}
		d.i++
	}
}

// peek returns the next byte, or 0 at the end of the body (0 starts no
// JSON token, so it fails wherever a token is due).
func (d *pageDecoder) peek() byte {
	if d.i < len(d.s) {
		return d.s[d.i]
	}
	return 0
}

func (d *pageDecoder) syntaxError(what string) error {
	if d.i >= len(d.s) {
		return fmt.Errorf("invalid JSON: %s, at the end of the body", what)
	}
	return fmt.Errorf("invalid JSON at byte %d (%q): %s", d.i, d.s[d.i], what)
}

func (d *pageDecoder) typeError(field, want string) error {
	return fmt.Errorf("%s is not %s (byte %d)", field, want, d.i)
}

// parseUpdateTime parses an UpdateTime as time.Parse(time.RFC3339Nano, s)
// does. The upstream's own layout, 2006-01-02T15:04:05.000Z, takes a
// shorter way (two fifths of the time); anything else goes to time.Parse.
func parseUpdateTime(s string) (time.Time, error) {
	if len(s) == len("2006-01-02T15:04:05.000Z") && s[4] == '-' && s[7] == '-' && s[10] == 'T' &&
		s[13] == ':' && s[16] == ':' && s[19] == '.' && s[23] == 'Z' && upstreamTimeDigits(s) {
		digit := func(i int) int { return int(s[i] - '0') }
		year := digit(0)*1000 + digit(1)*100 + digit(2)*10 + digit(3)
		month, day := digit(5)*10+digit(6), digit(8)*10+digit(9)
		hour, minute, sec := digit(11)*10+digit(12), digit(14)*10+digit(15), digit(17)*10+digit(18)
		milli := digit(20)*100 + digit(21)*10 + digit(22)
		if 1 <= month && month <= 12 && 1 <= day && day <= daysIn(month, year) &&
			hour < 24 && minute < 60 && sec < 60 {
			unix := daysSinceEpoch(year, month, day)*86400 + int64(hour*3600+minute*60+sec)
			// What time.Date(…, time.UTC) gives, without its normalising.
			return time.Unix(unix, int64(milli)*1e6).UTC(), nil
		}
	}
	return time.Parse(time.RFC3339Nano, s)
}

// upstreamTimeDigits reports whether s, 24 bytes long, has ASCII digits
// wherever the layout 2006-01-02T15:04:05.000Z has them.
func upstreamTimeDigits(s string) bool {
	for _, i := range [...]int{0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22} {
		if s[i]-'0' > 9 {
			return false
		}
	}
	return true
}

// daysSinceEpoch returns the number of days from 1970-01-01 to the date
// (a valid one, in the years 0..9999) of the proleptic Gregorian
// calendar. It counts in 400-year eras from 1 March of a year before year
// 0, so that a leap day ends its year and every era is 146097 days.
func daysSinceEpoch(year, month, day int) int64 {
	const shift = 4800 // years, 12 eras: keeps the year positive
	y := int64(year) + shift
	if month <= 2 { // January and February end the year before
		y--
	}
	era, yearOfEra := y/400, y%400
	dayOfYear := int64((153*((month+9)%12)+2)/5 + day - 1) // from 1 March
	dayOfEra := yearOfEra*365 + yearOfEra/4 - yearOfEra/100 + dayOfYear
	// 719468 days from 0000-03-01 to 1970-01-01.
	return era*146097 + dayOfEra - 719468 - shift/400*146097
}

// daysIn returns the number of days of month (1..12) in the proleptic
// Gregorian year.
func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
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
