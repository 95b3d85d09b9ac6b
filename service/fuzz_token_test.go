package service

import (
	"encoding/base64"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

// FuzzDecodeToken decodes arbitrary page tokens and encodes arbitrary
// positions. decodeToken must never panic and fail only with its two
// errors; a token longer than maxTokenLength never decodes; a token that
// decodes is exactly encodeToken's spelling of its upstream.Cursor (one token per
// upstream.Cursor); every upstream.Cursor encodes to a URL-safe token that decodes back
// to it, within the length limit for any upstream token the client
// accepts; and a token made for one desktop or region never decodes for
// another (barring a collision of the 32-bit binding, which the test
// recognises and skips: the binding guards against mix-ups, it is not
// authentication).
func FuzzDecodeToken(f *testing.F) {
	f.Add("cn-hangzhou", "ecd-abc", "", "ecd-other", "", uint32(0))
	f.Add("cn-hangzhou", "ecd-abc", encodeToken("cn-hangzhou", "ecd-abc", upstream.Cursor{Token: "a+b/c=", Skip: 57}), "ecd-other", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk", uint32(3))
	f.Add("cn-hangzhou", "ecd-abc", encodeToken("cn-hangzhou", "ecd-abc", upstream.Cursor{Skip: 3}), "ecd-abd", "", uint32(99))
	f.Add("cn-hangzhou", "ecd-abc", encodeToken("cn-hangzhou", "ecd-other", upstream.Cursor{Token: "x"}), "ecd-other", "x", uint32(0))
	f.Add("cn-hangzhou", "ecd-abc", "junk!", "ecd-other", "\xff\x00", uint32(1<<20))
	f.Add("cn-hangzhou", "ecd-abc", "AQ", "", strings.Repeat("t", upstream.MaxNextTokenLength), uint32(1<<20-1))
	f.Add("cn-hangzhou", "ecd-abc", strings.Repeat("A", maxTokenLength+1), "ecd-other", "", uint32(0))
	// Non-canonical spellings of a valid token: padding bits, a line
	// break, an overlong varint.
	valid := encodeToken("cn-hangzhou", "ecd-abc", upstream.Cursor{Token: "T", Skip: 1})
	f.Add("cn-hangzhou", "ecd-abc", valid[:len(valid)-1]+"B", "ecd-other", "", uint32(0))
	f.Add("cn-hangzhou", "ecd-abc", valid[:4]+"\n"+valid[4:], "ecd-other", "", uint32(0))
	overlong := append([]byte{tokenVersion}, binary.BigEndian.AppendUint32(nil, binding("cn-hangzhou", "ecd-abc"))...)
	overlong = append(overlong, 0x81, 0x00, 'T') // skip 1 in two varint bytes
	f.Add("cn-hangzhou", "ecd-abc", base64.RawURLEncoding.EncodeToString(overlong), "ecd-other", "", uint32(0))

	f.Fuzz(func(t *testing.T, region, desktop, token, other, up string, skip uint32) {
		// Decoding arbitrary tokens.
		p, err := decodeToken(region, desktop, token)
		switch {
		case err != nil && err != errTokenMalformed && err != errTokenOtherDesk:
			t.Fatalf("decodeToken(%q) failed with %v, want one of its two errors", token, err)
		case err != nil:
			if p != (upstream.Cursor{}) {
				t.Fatalf("decodeToken(%q) = %+v together with %v", token, p, err)
			}
		case token == "":
			if p != (upstream.Cursor{}) {
				t.Fatalf(`decodeToken("") = %+v, want the start`, p)
			}
		default:
			if len(token) > maxTokenLength {
				t.Fatalf("a token of %d characters decoded, limit %d", len(token), maxTokenLength)
			}
			if p.Skip < 0 || p.Skip >= maxSkip || p.Token == "" && p.Skip == 0 {
				t.Fatalf("decodeToken(%q) = %+v, a upstream.Cursor encodeToken never makes", token, p)
			}
			again := encodeToken(region, desktop, p)
			if again != token {
				t.Fatalf("decodeToken(%q) = %+v, which encodes as %q: more than one token per upstream.Cursor", token, p, again)
			}
			if p2, err := decodeToken(region, desktop, again); err != nil || p2 != p {
				t.Fatalf("re-encoded %q decodes to %+v, %v; want %+v", again, p2, err, p)
			}
			checkOtherDesk(t, region, desktop, other, token)
		}
		if len(token) > maxTokenLength && err == nil {
			t.Fatalf("a token of %d characters was accepted", len(token))
		}

		// Encoding arbitrary positions.
		want := upstream.Cursor{Token: up, Skip: int(skip % maxSkip)}
		tok := encodeToken(region, desktop, want)
		if want == (upstream.Cursor{}) {
			if tok != "" {
				t.Fatalf("the start encodes as %q, want empty", tok)
			}
			return
		}
		if strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Fatalf("token %q is not URL-safe", tok)
		}
		if len(up) <= upstream.MaxNextTokenLength && len(tok) > maxTokenLength {
			t.Fatalf("an upstream token of %d bytes gives a page token of %d characters, which the gateway refuses (limit %d)", len(up), len(tok), maxTokenLength)
		}
		got, err := decodeToken(region, desktop, tok)
		switch {
		case len(tok) > maxTokenLength:
			if err == nil {
				t.Fatalf("a token of %d characters decoded", len(tok))
			}
		case err != nil || got != want:
			t.Fatalf("decode(encode(%+v)) = %+v, %v", want, got, err)
		default:
			checkOtherDesk(t, region, desktop, other, tok)
		}
	})
}

// checkOtherDesk asserts that tok, valid for region/desktop, is refused
// for another desktop and another region.
func checkOtherDesk(t *testing.T, region, desktop, other, tok string) {
	t.Helper()
	for _, rd := range [][2]string{{region, other}, {other, desktop}, {region + "x", desktop}, {region, desktop + "x"}} {
		if rd == [2]string{region, desktop} {
			continue
		}
		if binding(rd[0], rd[1]) == binding(region, desktop) {
			continue // a 32-bit collision, see above
		}
		if p, err := decodeToken(rd[0], rd[1], tok); err != errTokenOtherDesk {
			t.Fatalf("token for %q/%q decoded for %q/%q to %+v, %v; want errTokenOtherDesk", region, desktop, rd[0], rd[1], p, err)
		}
	}
}
