package service

import (
	"encoding/binary"
	"errors"
	"slices"
)

// A resume_cursor carries a watchCursor. Its payload, sealed by TokenKeys.seal
// (kind kindWatchCursor, bound to the region and desktop), is
//
//	varint mark (Unix ms) | uvarint n | n × 8-byte recordKey | uvarint m | m × 8-byte changeKey
//
// with both key lists sorted. It is usually 20 to 40 bytes: one record at
// the mark, and at most one change in progress.

// maxCursorKeys bounds each key list of a cursor: records sharing one
// millisecond, and changes in progress at once.
const maxCursorKeys = 1024

// maxWatchCursorLength bounds resume_cursor before decoding: the longest
// cursor encodeWatchCursor makes, in base64 characters.
const maxWatchCursorLength = ((1+4+3*binary.MaxVarintLen64+2*8*maxCursorKeys)*4 + 2) / 3

var (
	errCursorMalformed = errors.New("resume_cursor is not a cursor this gateway issued")
	errCursorOtherDesk = errors.New("resume_cursor belongs to another region or desktop")
)

// encodeWatchCursor returns the resume_cursor of c for a desktop.
func encodeWatchCursor(k *TokenKeys, region, desktop string, c *watchCursor) string {
	b := make([]byte, 0, 2*binary.MaxVarintLen64+8*(len(c.atMark)+len(c.running)))
	b = binary.AppendVarint(b, c.mark)
	b = binary.AppendUvarint(b, uint64(len(c.atMark)))
	for _, k := range c.atMark {
		b = binary.BigEndian.AppendUint64(b, uint64(k))
	}
	b = binary.AppendUvarint(b, uint64(len(c.running)))
	for _, k := range c.running {
		b = binary.BigEndian.AppendUint64(b, uint64(k))
	}
	return k.seal(kindWatchCursor, cursorBinding(region, desktop), b)
}

// decodeWatchCursor parses a cursor of encodeWatchCursor for the same
// region and desktop; "" is no cursor (nil).
func decodeWatchCursor(k *TokenKeys, region, desktop, cursor string) (*watchCursor, error) {
	if cursor == "" {
		return nil, nil
	}
	b, err := k.open(kindWatchCursor, cursorBinding(region, desktop), cursor, maxWatchCursorLength)
	switch {
	case errors.Is(err, errTokenInvalid):
		return nil, errCursorOtherDesk
	case errors.Is(err, errTokenMalformed):
		return nil, errCursorMalformed
	case err != nil:
		return nil, fieldError("resume_cursor", err)
	}
	r := payloadReader{b: b}
	mark, n := binary.Varint(r.b)
	if n <= 0 || mark < minMark {
		return nil, errCursorMalformed
	}
	r.b = r.b[n:]
	c := &watchCursor{mark: mark}
	atMark, ok := readKeys[recordKey](&r)
	if !ok {
		return nil, errCursorMalformed
	}
	running, ok := readKeys[changeKey](&r)
	if !ok || len(r.b) != 0 || !slices.IsSorted(running) || !slices.IsSorted(atMark) || len(slices.Compact(slices.Clone(atMark))) != len(atMark) {
		return nil, errCursorMalformed
	}
	c.atMark, c.running = atMark, running
	if encodeWatchCursor(k, region, desktop, c) != cursor {
		return nil, errCursorMalformed // not the canonical spelling
	}
	return c, nil
}

func readKeys[K recordKey | changeKey](r *payloadReader) ([]K, bool) {
	n := r.uvarint()
	if r.bad || n > maxCursorKeys || uint64(len(r.b)) < 8*n {
		return nil, false
	}
	keys := make([]K, n)
	var b [8]byte
	for i := range keys {
		r.read(b[:])
		keys[i] = K(binary.BigEndian.Uint64(b[:]))
	}
	return keys, true
}
