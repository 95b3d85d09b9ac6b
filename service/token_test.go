package service

import (
	"encoding/base64"
	"encoding/binary"
	"hash/fnv"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

// testKeys returns token keys made for one test, sealing with key a and
// opening with a and the others.
func testKeys(t testing.TB, keys ...string) *TokenKeys {
	t.Helper()
	raw := make([][]byte, len(keys))
	for i, k := range keys {
		raw[i] = []byte(k)
	}
	k, err := NewTokenKeys(raw...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const (
	keyA = "key-a-0123456789abcdef0123456789abcdef"
	keyB = "key-b-0123456789abcdef0123456789abcdef"
)

func TestTokenRoundTrip(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, keyA)
	testCases := []upstream.Cursor{
		{Token: "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk"},
		{Token: "a+b/c=", Skip: 57},
		{Skip: 3}, // cut inside the first page
		{Token: strings.Repeat("x", upstream.MaxNextTokenLength), Skip: maxSkip - 1},
	}
	for _, c := range testCases {
		tok := keys.sealCursor("cn-hangzhou", "ecd-abc", c)
		if strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Errorf("token %q is not URL-safe", tok)
		}
		if len(tok) > maxTokenLength {
			t.Errorf("a token of %d characters, over the limit %d the gateway accepts", len(tok), maxTokenLength)
		}
		got, err := keys.openCursor("cn-hangzhou", "ecd-abc", tok)
		if err != nil || got != c {
			t.Errorf("open(seal(%+v)) = %+v, %v", c, got, err)
		}
		if _, err := keys.openCursor("cn-hangzhou", "ecd-other", tok); err != errTokenInvalid {
			t.Errorf("another desktop accepted the token: %v", err)
		}
		if _, err := keys.openCursor("cn-shanghai", "ecd-abc", tok); err != errTokenInvalid {
			t.Errorf("another region accepted the token: %v", err)
		}
		// The binding is length-prefixed: moving the separator between
		// region and desktop is another binding.
		if _, err := keys.openCursor("cn-hangzhou\x00ecd", "abc", tok); err != errTokenInvalid {
			t.Errorf("a shifted binding accepted the token: %v", err)
		}
	}
	if tok := keys.sealCursor("cn-hangzhou", "ecd-abc", upstream.Cursor{}); tok != "" {
		t.Errorf("the start seals as %q, want empty", tok)
	}
}

// TestTokenForgeryRefused tries what the issue found possible with the
// unkeyed 32-bit binding: minting a token that sends chosen NextToken
// bytes upstream. Every altered bit, another key, an unsigned token of the
// earlier format and a token of another kind are refused.
func TestTokenForgeryRefused(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, keyA)
	tok := keys.sealCursor("cn-hangzhou", "ecd-abc", upstream.Cursor{Token: "next", Skip: 2})
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	for i := range raw {
		for bit := range 8 {
			altered := append([]byte(nil), raw...)
			altered[i] ^= 1 << bit
			if c, err := keys.openCursor("cn-hangzhou", "ecd-abc", base64.RawURLEncoding.EncodeToString(altered)); err == nil {
				t.Fatalf("byte %d bit %d altered: accepted as %+v", i, bit, c)
			}
		}
	}

	// The earlier format: version 1, an FNV-32a binding, a skip and raw
	// NextToken bytes, as an attacker could compute it.
	h := fnv.New32a()
	h.Write([]byte("cn-hangzhou\x00ecd-abc"))
	unsigned := binary.BigEndian.AppendUint32([]byte{unsignedTokenVersion}, h.Sum32())
	unsigned = append(binary.AppendUvarint(unsigned, 0), "\x00\xff"...)
	if _, err := keys.openCursor("cn-hangzhou", "ecd-abc", base64.RawURLEncoding.EncodeToString(unsigned)); err != errTokenUnsigned {
		t.Errorf("an unsigned token of the earlier format: %v, want %v", err, errTokenUnsigned)
	}

	// A token sealed with a key this gateway does not hold.
	other := testKeys(t, keyB).sealCursor("cn-hangzhou", "ecd-abc", upstream.Cursor{Token: "\x00\xff"})
	if _, err := keys.openCursor("cn-hangzhou", "ecd-abc", other); err != errTokenKey {
		t.Errorf("a token of another key: %v, want %v", err, errTokenKey)
	}

	// A token of another kind with a valid MAC is not a page token.
	payload := binary.AppendUvarint(nil, 0)
	payload = append(payload, "next"...)
	if _, err := keys.openCursor("cn-hangzhou", "ecd-abc", keys.seal(kindCursor+1, cursorBinding("cn-hangzhou", "ecd-abc"), payload)); err != errTokenMalformed {
		t.Errorf("a token of another kind: %v, want %v", err, errTokenMalformed)
	}
}

// TestTokenKeyRotation: after a rotation the new key seals, and tokens
// of the previous key still open while it is listed; once it is dropped,
// they are refused as signed by an unknown key.
func TestTokenKeyRotation(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, keyA)
	c := upstream.Cursor{Token: "next"}
	old := keys.sealCursor("cn-hangzhou", "ecd-abc", c)
	idA := keys.SealingKeyID()

	if err := keys.Replace([]byte(keyB), []byte(keyA)); err != nil {
		t.Fatal(err)
	}
	if keys.SealingKeyID() == idA {
		t.Error("the sealing key did not change")
	}
	if got, err := keys.openCursor("cn-hangzhou", "ecd-abc", old); err != nil || got != c {
		t.Errorf("a token of the previous key during the rotation: %+v, %v", got, err)
	}
	fresh := keys.sealCursor("cn-hangzhou", "ecd-abc", c)
	if fresh == old {
		t.Error("the new key seals the same token as the old one")
	}
	if got, err := testKeys(t, keyB).openCursor("cn-hangzhou", "ecd-abc", fresh); err != nil || got != c {
		t.Errorf("a new token does not open with the new key alone: %+v, %v", got, err)
	}

	if err := keys.Replace([]byte(keyB)); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.openCursor("cn-hangzhou", "ecd-abc", old); err != errTokenKey {
		t.Errorf("a token of a key rotated out: %v, want %v", err, errTokenKey)
	}
	if err := keys.Replace([]byte("short")); err == nil {
		t.Error("a 5-byte key was accepted")
	}
	if got, err := keys.openCursor("cn-hangzhou", "ecd-abc", fresh); err != nil || got != c {
		t.Errorf("a refused replacement changed the keys in force: %+v, %v", got, err)
	}
}

func TestOpenCursorRejectsJunk(t *testing.T) {
	t.Parallel()
	keys := testKeys(t, keyA)
	for _, tok := range []string{"junk!", "AAAA", "AQ", "Ag", strings.Repeat("A", maxTokenLength+1), "Ag" + strings.Repeat("A", 40)} {
		if c, err := keys.openCursor("cn-hangzhou", "ecd-abc", tok); err == nil {
			t.Errorf("openCursor(%q) = %+v, want an error", tok, c)
		}
	}
}
