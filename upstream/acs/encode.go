package acs

import (
	"net/url"
	"slices"
	"strings"
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
	const hexDigits = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if unreserved(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
	}
	return string(b)
}

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
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		ek := PercentEncode(k)
		for _, v := range params[k] {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(ek)
			b.WriteByte('=')
			b.WriteString(PercentEncode(v))
		}
	}
	return b.String()
}
