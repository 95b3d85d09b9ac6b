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
	b := make([]byte, 0, binary.MaxVarintLen64+len(p.Token))
	b = binary.AppendUvarint(b, uint64(p.Skip))
	b = append(b, p.Token...)
	return sealToken(tokenVersion, desktopScope(region, desktop), b)
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
	b, err := openToken(tokenVersion, desktopScope(region, desktop), token, maxTokenLength)
	switch {
	case errors.Is(err, errTokenScope):
		return upstream.Cursor{}, errTokenOtherDesk
	case err != nil || len(b) == 0:
		return upstream.Cursor{}, errTokenMalformed
	}
	skip, n := binary.Uvarint(b)
	if n <= 0 || skip >= maxSkip {
		return upstream.Cursor{}, errTokenMalformed
	}
	p := upstream.Cursor{Token: string(b[n:]), Skip: int(skip)}
	if p.Token == "" && p.Skip == 0 {
		return upstream.Cursor{}, errTokenMalformed // encodeToken never makes this
	}
	if encodeToken(region, desktop, p) != token {
		return upstream.Cursor{}, errTokenMalformed // not the canonical spelling
	}
	return p, nil
}

// desktopScope is what a List or Stream token is bound to.
func desktopScope(region, desktop string) string { return region + "\x00" + desktop }

// Token framing. Every token the gateway hands out — the page and resume
// tokens of List and Stream, fleet resume tokens, watch cursors — is
//
//	base64url(kind | binding | payload)
//
// where kind (one byte) says which layout the payload has, and binding (4
// bytes, big endian) is a hash of the token's scope: what the token was
// made for (region and desktop, or region and desktop set), so that a
// token passed with another scope is refused rather than followed. The
// binding guards against mix-ups; it is not authentication. sealToken and
// openToken are the only functions that know the framing, so a keyed MAC
// replaces the binding here, for every kind at once.

// errTokenScope is openToken's error for a token made for another scope.
var errTokenScope = errors.New("token made for another scope")

// sealToken frames payload as a token of kind for scope.
func sealToken(kind byte, scope string, payload []byte) string {
	b := make([]byte, 0, 1+4+len(payload))
	b = append(b, kind)
	b = binary.BigEndian.AppendUint32(b, scopeBinding(scope))
	b = append(b, payload...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// openToken returns the payload of a token of kind for scope made by
// sealToken: errTokenScope when it was made for another scope, another
// error when it is no such token or longer than maxLen characters.
func openToken(kind byte, scope, token string, maxLen int) ([]byte, error) {
	if len(token) > maxLen {
		return nil, errTokenMalformed
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < 1+4 || b[0] != kind {
		return nil, errTokenMalformed
	}
	if binary.BigEndian.Uint32(b[1:5]) != scopeBinding(scope) {
		return nil, errTokenScope
	}
	return b[5:], nil
}

// scopeBinding is the binding of a token for scope.
func scopeBinding(scope string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(scope))
	return h.Sum32()
}

// binding is the binding of a List or Stream token.
func binding(region, desktop string) uint32 { return scopeBinding(desktopScope(region, desktop)) }
