package service

import (
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

func TestTokenRoundTrip(t *testing.T) {
	t.Parallel()
	testCases := []upstream.Cursor{
		{Token: "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk"},
		{Token: "a+b/c=", Skip: 57},
		{Skip: 3}, // cut inside the first page
		{Token: strings.Repeat("x", 1000), Skip: 99},
	}
	for _, p := range testCases {
		tok := encodeToken("cn-hangzhou", "ecd-abc", p)
		if strings.ContainsAny(tok, "+/=") {
			t.Errorf("token %q is not URL-safe", tok)
		}
		got, err := decodeToken("cn-hangzhou", "ecd-abc", tok)
		if err != nil || got != p {
			t.Errorf("decode(encode(%+v)) = %+v, %v", p, got, err)
		}
		if _, err := decodeToken("cn-hangzhou", "ecd-other", tok); err != errTokenOtherDesk {
			t.Errorf("another desktop accepted the token: %v", err)
		}
		if _, err := decodeToken("cn-shanghai", "ecd-abc", tok); err != errTokenOtherDesk {
			t.Errorf("another region accepted the token: %v", err)
		}
	}
	if tok := encodeToken("cn-hangzhou", "ecd-abc", upstream.Cursor{}); tok != "" {
		t.Errorf("the start encodes as %q, want empty", tok)
	}
}

func TestDecodeTokenRejectsJunk(t *testing.T) {
	t.Parallel()
	for _, tok := range []string{"junk!", "AAAA", "AQ", strings.Repeat("A", maxTokenLength+1), "Ag" + strings.Repeat("A", 10)} {
		if p, err := decodeToken("cn-hangzhou", "ecd-abc", tok); err == nil {
			t.Errorf("decodeToken(%q) = %+v, want an error", tok, p)
		}
	}
}
