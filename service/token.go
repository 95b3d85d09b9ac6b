package service

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash/fnv"

	"github.com/imagerecords/imagerecords/upstream"
)

// A token carries an upstream.Cursor: where a List or Stream call starts,
// the upstream NextToken of a page (empty for the first page) and how many
// records of that page were already delivered. Callers see it only as an
// opaque token, so a stream cut by max_records can resume in the middle of
// an upstream page.

// tokenVersion leads every token; a new layout gets a new number.
const tokenVersion = 1

// maxTokenLength bounds page_token before decoding. It leaves room for the
// longest token encodeToken makes: 1+4+3 bytes of header (a skip below
// 2^20 is at most 3 uvarint bytes) and an upstream NextToken of up to
// upstream.MaxNextTokenLength (1024) bytes, 1376 characters in all, so the
// gateway never hands out a token it would then refuse.
const maxTokenLength = 2048

// maxSkip bounds a upstream.Cursor's skip; encodeToken never makes more (a page
// holds far fewer records).
const maxSkip = 1 << 20

var (
	errTokenMalformed = errors.New("page_token is not a token this gateway issued")
	errTokenOtherDesk = errors.New("page_token belongs to another region or desktop")
)

// encodeToken returns the token for p, bound to one region and desktop so
// that a token passed with another desktop is refused rather than followed.
// A upstream.Cursor at the very start encodes as "".
func encodeToken(region, desktop string, p upstream.Cursor) string {
	if p.Token == "" && p.Skip == 0 {
		return ""
	}
	b := make([]byte, 0, 1+4+binary.MaxVarintLen64+len(p.Token))
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint32(b, binding(region, desktop))
	b = binary.AppendUvarint(b, uint64(p.Skip))
	b = append(b, p.Token...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeToken parses a token made by encodeToken for the same region and
// desktop; "" is the start. It accepts only the exact string encodeToken
// makes for the upstream.Cursor it decodes to (no base64 padding bits or line
// breaks, no overlong varint), so every upstream.Cursor has one token: a cache
// keyed on a Connect GET request sees one URL per page.
func decodeToken(region, desktop, token string) (upstream.Cursor, error) {
	if token == "" {
		return upstream.Cursor{}, nil
	}
	if len(token) > maxTokenLength {
		return upstream.Cursor{}, errTokenMalformed
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < 1+4+1 || b[0] != tokenVersion {
		return upstream.Cursor{}, errTokenMalformed
	}
	if binary.BigEndian.Uint32(b[1:5]) != binding(region, desktop) {
		return upstream.Cursor{}, errTokenOtherDesk
	}
	skip, n := binary.Uvarint(b[5:])
	if n <= 0 || skip >= maxSkip {
		return upstream.Cursor{}, errTokenMalformed
	}
	p := upstream.Cursor{Token: string(b[5+n:]), Skip: int(skip)}
	if p.Token == "" && p.Skip == 0 {
		return upstream.Cursor{}, errTokenMalformed // encodeToken never makes this
	}
	if encodeToken(region, desktop, p) != token {
		return upstream.Cursor{}, errTokenMalformed // not the canonical spelling
	}
	return p, nil
}

func binding(region, desktop string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(region))
	h.Write([]byte{0})
	h.Write([]byte(desktop))
	return h.Sum32()
}
