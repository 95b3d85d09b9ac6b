package service

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

// fuzzKeys seal the tokens of the fuzz targets.
var fuzzKeys, _ = NewTokenKeys([]byte(keyA))

// FuzzDecodeToken opens arbitrary page tokens and seals arbitrary
// positions. openCursor must never panic and fail only with its token
// errors; a token longer than maxTokenLength never opens; a token that
// opens is exactly sealCursor's spelling of its upstream.Cursor (one
// token per cursor); every cursor seals to a URL-safe token that opens
// back to it, within the length limit for any upstream token the client
// accepts; and a token made for one desktop or region never opens for
// another.
func FuzzDecodeToken(f *testing.F) {
	seal := fuzzKeys.sealCursor
	f.Add("cn-hangzhou", "ecd-abc", "", "ecd-other", "", uint32(0))
	f.Add("cn-hangzhou", "ecd-abc", seal("cn-hangzhou", "ecd-abc", upstream.Cursor{Token: "a+b/c=", Skip: 57}), "ecd-other", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk", uint32(3))
	f.Add("cn-hangzhou", "ecd-abc", seal("cn-hangzhou", "ecd-abc", upstream.Cursor{Skip: 3}), "ecd-abd", "", uint32(99))
	f.Add("cn-hangzhou", "ecd-abc", seal("cn-hangzhou", "ecd-other", upstream.Cursor{Token: "x"}), "ecd-other", "x", uint32(0))
	f.Add("cn-hangzhou", "ecd-abc", "junk!", "ecd-other", "\xff\x00", uint32(1<<20))
	f.Add("cn-hangzhou", "ecd-abc", "AQ", "", strings.Repeat("t", upstream.MaxNextTokenLength), uint32(1<<20-1))
	f.Add("cn-hangzhou", "ecd-abc", strings.Repeat("A", maxTokenLength+1), "ecd-other", "", uint32(0))
	// Non-canonical spellings of a valid token: padding bits, a line break.
	valid := seal("cn-hangzhou", "ecd-abc", upstream.Cursor{Token: "T", Skip: 1})
	f.Add("cn-hangzhou", "ecd-abc", valid[:len(valid)-1]+"B", "ecd-other", "", uint32(0))
	f.Add("cn-hangzhou", "ecd-abc", valid[:4]+"\n"+valid[4:], "ecd-other", "", uint32(0))
	// A token of the earlier, unsigned format.
	f.Add("cn-hangzhou", "ecd-abc", base64.RawURLEncoding.EncodeToString([]byte{unsignedTokenVersion, 1, 2, 3, 4, 0, 0, 0xff}), "ecd-other", "", uint32(0))

	f.Fuzz(func(t *testing.T, region, desktop, token, other, up string, skip uint32) {
		// Opening arbitrary tokens.
		c, err := fuzzKeys.openCursor(region, desktop, token)
		switch {
		case err != nil && err != errTokenMalformed && err != errTokenUnsigned && err != errTokenKey && err != errTokenInvalid:
			t.Fatalf("openCursor(%q) failed with %v, want one of the token errors", token, err)
		case err != nil:
			if c != (upstream.Cursor{}) {
				t.Fatalf("openCursor(%q) = %+v together with %v", token, c, err)
			}
		case token == "":
			if c != (upstream.Cursor{}) {
				t.Fatalf(`openCursor("") = %+v, want the start`, c)
			}
		default:
			if len(token) > maxTokenLength {
				t.Fatalf("a token of %d characters opened, limit %d", len(token), maxTokenLength)
			}
			if c.Skip < 0 || c.Skip >= maxSkip || c.Token == "" && c.Skip == 0 {
				t.Fatalf("openCursor(%q) = %+v, a cursor sealCursor never makes", token, c)
			}
			if again := seal(region, desktop, c); again != token {
				t.Fatalf("openCursor(%q) = %+v, which seals as %q: more than one token per cursor", token, c, again)
			}
			checkOtherDesk(t, region, desktop, other, token)
		}

		// Sealing arbitrary positions.
		want := upstream.Cursor{Token: up, Skip: int(skip % maxSkip)}
		tok := seal(region, desktop, want)
		if want == (upstream.Cursor{}) {
			if tok != "" {
				t.Fatalf("the start seals as %q, want empty", tok)
			}
			return
		}
		if strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Fatalf("token %q is not URL-safe", tok)
		}
		if len(up) <= upstream.MaxNextTokenLength && len(tok) > maxTokenLength {
			t.Fatalf("an upstream token of %d bytes gives a page token of %d characters, which the gateway refuses (limit %d)", len(up), len(tok), maxTokenLength)
		}
		got, err := fuzzKeys.openCursor(region, desktop, tok)
		switch {
		case len(tok) > maxTokenLength:
			if err == nil {
				t.Fatalf("a token of %d characters opened", len(tok))
			}
		case err != nil || got != want:
			t.Fatalf("open(seal(%+v)) = %+v, %v", want, got, err)
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
		if c, err := fuzzKeys.openCursor(rd[0], rd[1], tok); err != errTokenInvalid {
			t.Fatalf("token for %q/%q opened for %q/%q to %+v, %v; want errTokenInvalid", region, desktop, rd[0], rd[1], c, err)
		}
	}
}
