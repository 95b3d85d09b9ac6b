package service

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash/fnv"
)

// A position is where a List or Stream call starts: the upstream NextToken
// of a page (empty for the first page) and how many records of that page
// were already delivered. Callers see it only as an opaque token, so a
// stream cut by max_records can resume in the middle of an upstream page.
type position struct {
	upstreamToken string
	skip          int
}

// tokenVersion leads every token; a new layout gets a new number.
const tokenVersion = 1

// maxTokenLength bounds page_token before decoding. It leaves room for the
// longest token encodeToken makes: 1+4+3 bytes of header (a skip below
// 2^20 is at most 3 uvarint bytes) and an upstream NextToken of up to
// upstream.MaxNextTokenLength (1024) bytes, 1376 characters in all, so the
// gateway never hands out a token it would then refuse.
const maxTokenLength = 2048

// maxSkip bounds a position's skip; encodeToken never makes more (a page
// holds far fewer records).
const maxSkip = 1 << 20

var (
	errTokenMalformed = errors.New("page_token is not a token this gateway issued")
	errTokenOtherDesk = errors.New("page_token belongs to another region or desktop")
)

// encodeToken returns the token for p, bound to one region and desktop so
// that a token passed with another desktop is refused rather than followed.
// A position at the very start encodes as "".
func encodeToken(region, desktop string, p position) string {
	if p.upstreamToken == "" && p.skip == 0 {
		return ""
	}
	b := make([]byte, 0, 1+4+binary.MaxVarintLen64+len(p.upstreamToken))
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint32(b, binding(region, desktop))
	b = binary.AppendUvarint(b, uint64(p.skip))
	b = append(b, p.upstreamToken...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeToken parses a token made by encodeToken for the same region and
// desktop; "" is the start. It accepts only the exact string encodeToken
// makes for the position it decodes to (no base64 padding bits or line
// breaks, no overlong varint), so every position has one token: a cache
// keyed on a Connect GET request sees one URL per page.
func decodeToken(region, desktop, token string) (position, error) {
	if token == "" {
		return position{}, nil
	}
	if len(token) > maxTokenLength {
		return position{}, errTokenMalformed
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < 1+4+1 || b[0] != tokenVersion {
		return position{}, errTokenMalformed
	}
	if binary.BigEndian.Uint32(b[1:5]) != binding(region, desktop) {
		return position{}, errTokenOtherDesk
	}
	skip, n := binary.Uvarint(b[5:])
	if n <= 0 || skip >= maxSkip {
		return position{}, errTokenMalformed
	}
	p := position{upstreamToken: string(b[5+n:]), skip: int(skip)}
	if p.upstreamToken == "" && p.skip == 0 {
		return position{}, errTokenMalformed // encodeToken never makes this
	}
	if encodeToken(region, desktop, p) != token {
		return position{}, errTokenMalformed // not the canonical spelling
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
