package acs

import (
	"net/url"
	"slices"
)

// TimestampLayout is the format of V3's x-acs-date header and V1's
// Timestamp parameter: UTC, no fraction.
const TimestampLayout = "2006-01-02T15:04:05Z"

// PercentEncode encodes s the way both signature versions require: UTF-8
// bytes, every byte outside A-Z a-z 0-9 - _ . ~ as %XY with upper-case hex
// (so a space is %20, never +, and * is %2A).
func PercentEncode(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	return string(appendPercentEncoded(make([]byte, 0, len(s)+2*n), s))
}

// appendPercentEncoded appends s to b encoded as [PercentEncode] encodes
// it.
func appendPercentEncoded[T string | []byte](b []byte, s T) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', upperHex[c>>4], upperHex[c&15])
	}
	return b
}

// upperHex are the digits of a percent-encoded byte.
const upperHex = "0123456789ABCDEF"

func unreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}

// CanonicalQuery sorts params by name (byte order of the unencoded names)
// and joins them as PercentEncode(name)=PercentEncode(value) with &; an
// empty value gives "name=". A name with several values contributes one
// pair per value, in the order given.
//
// It is both the canonical query string that the signatures cover and a
// valid query string or form body to send: what the receiver parses from
// it is exactly params.
func CanonicalQuery(params url.Values) string {
	return string(appendCanonicalQuery(nil, params))
}

// appendCanonicalQuery appends [CanonicalQuery] of params to b.
func appendCanonicalQuery(b []byte, params url.Values) []byte {
	// The client's requests have at most four parameters: their names
	// sort on the stack.
	var names [8]string
	keys := names[:0]
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	start := len(b)
	for _, k := range keys {
		for _, v := range params[k] {
			if len(b) > start {
				b = append(b, '&')
			}
			b = appendPercentEncoded(b, k)
			b = append(b, '=')
			b = appendPercentEncoded(b, v)
		}
	}
	return b
}
