package service

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/imagerecords/imagerecords/upstream"
)

// Every token the gateway hands out (page and resume tokens, and any later
// kind) is sealed here, in one format:
//
//	version (1 byte, 2) | kind (1) | key id (4) | payload | MAC (16)
//
// in unpadded base64url. The MAC is HMAC-SHA256 truncated to 128 bits,
// keyed with the issuing [TokenKeys] key, over everything before it and
// over a binding the token is valid for (for page tokens: the region and
// desktop), which the token itself does not carry. A token altered in any
// bit, made up, or used for another binding fails the MAC and never
// reaches the upstream; every replica holding the same keys opens every
// other replica's tokens, so a stream resumes through any of them.

// Token kinds: each kind of token has its own number, so that a token of
// one kind is never accepted as another. New kinds take the next number.
const (
	// kindCursor is a page or resume token of List and Stream: an
	// [upstream.Cursor].
	kindCursor byte = 1
	// kindFleet is a fleet resume token (fleet_token.go).
	kindFleet byte = 2
	// kindWatchCursor is a watch resume_cursor (watch_cursor.go).
	kindWatchCursor byte = 3
)

const (
	// tokenVersion leads every sealed token.
	tokenVersion = 2
	// unsignedTokenVersion led the tokens of earlier gateways, bound by an
	// unkeyed hash; they are refused with a message saying so.
	unsignedTokenVersion = 1
	tokenKeyIDSize       = 4
	tokenMACSize         = 16
	tokenHeaderSize      = 1 + 1 + tokenKeyIDSize
)

// MinTokenKeyBytes is the shortest key [NewTokenKeys] accepts: 32 bytes,
// e.g. the 44 characters of `openssl rand -base64 32`.
const MinTokenKeyBytes = 32

// maxTokenLength bounds a token before decoding. It leaves room for the
// longest token sealCursor makes: 6 bytes of header, a skip below 2^20 (at
// most 3 uvarint bytes), an upstream NextToken of up to
// upstream.MaxNextTokenLength (1024) bytes and 16 of MAC, 1399 characters
// in all, so the gateway never hands out a token it would then refuse.
const maxTokenLength = 2048

// maxSkip bounds a Cursor's skip; sealCursor never makes more (a page holds
// far fewer records).
const maxSkip = 1 << 20

var (
	errTokenMalformed = errors.New("page_token is not a token this gateway issued")
	errTokenUnsigned  = errors.New("page_token was issued by an earlier gateway version, without a signature, and is no longer accepted; start again without page_token")
	errTokenKey       = errors.New("page_token was signed with a key this gateway does not hold (another deployment, or a key rotated out); start again without page_token")
	errTokenInvalid   = errors.New("page_token does not verify: it was altered, or issued for another region or desktop")
)

// TokenKeys are the keys that seal tokens: the first key seals every new
// token, and every key opens tokens. Keeping the previous key after a
// rotation keeps the tokens it sealed valid while callers still hold
// them. TokenKeys are safe for concurrent use, and [TokenKeys.Replace]
// changes them while the gateway runs.
type TokenKeys struct {
	set atomic.Pointer[[]tokenKey]
}

type tokenKey struct {
	id  [tokenKeyIDSize]byte
	key []byte
}

// NewTokenKeys returns token keys: keys[0] seals, all of them open. Each
// key must be at least [MinTokenKeyBytes] long.
func NewTokenKeys(keys ...[]byte) (*TokenKeys, error) {
	k := &TokenKeys{}
	if err := k.Replace(keys...); err != nil {
		return nil, err
	}
	return k, nil
}

// RandomTokenKeys returns one random key: tokens open only in this
// process, so a stream resumes only through the replica that began it.
func RandomTokenKeys() *TokenKeys {
	k, _ := NewTokenKeys([]byte(rand.Text() + rand.Text())) // 52 characters, 260 bits
	return k
}

// Replace puts keys in force (keys[0] seals, all open); on error the keys
// in force stay.
func (k *TokenKeys) Replace(keys ...[]byte) error {
	if len(keys) == 0 {
		return errors.New("no token key")
	}
	set := make([]tokenKey, len(keys))
	for i, key := range keys {
		if len(key) < MinTokenKeyBytes {
			return fmt.Errorf("token key %d has %d bytes; at least %d are needed (e.g. openssl rand -base64 32)", i+1, len(key), MinTokenKeyBytes)
		}
		set[i] = tokenKey{id: tokenKeyID(key), key: bytes.Clone(key)}
	}
	k.set.Store(&set)
	return nil
}

// SealingKeyID names the key that seals new tokens, for logs: a hash of the
// key, never the key.
func (k *TokenKeys) SealingKeyID() string {
	return fmt.Sprintf("%x", (*k.set.Load())[0].id)
}

// Len is the number of keys that open tokens.
func (k *TokenKeys) Len() int { return len(*k.set.Load()) }

func tokenKeyID(key []byte) [tokenKeyIDSize]byte {
	sum := sha256.Sum256(append([]byte("imagerecords token key id\x00"), key...))
	return [tokenKeyIDSize]byte(sum[:tokenKeyIDSize])
}

// seal returns the token of a payload of kind, valid only for binding.
func (k *TokenKeys) seal(kind byte, binding string, payload []byte) string {
	key := (*k.set.Load())[0]
	b := make([]byte, 0, tokenHeaderSize+len(payload)+tokenMACSize)
	b = append(b, tokenVersion, kind)
	b = append(b, key.id[:]...)
	b = append(b, payload...)
	b = append(b, tokenMAC(key.key, binding, b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// open returns the payload of a token that seal made for kind and
// binding with any of the keys, or one of the token errors (they name
// page_token; [fieldError] names another field). A token longer than
// maxLen characters is refused before decoding. It accepts
// only the exact spelling seal makes (no base64 padding bits or line
// breaks), so each sealed payload has one token: a cache keyed on a
// Connect GET request sees one URL per page.
func (k *TokenKeys) open(kind byte, binding string, token string, maxLen int) ([]byte, error) {
	if len(token) > maxLen {
		return nil, errTokenMalformed
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) == 0 {
		return nil, errTokenMalformed
	}
	if b[0] == unsignedTokenVersion {
		return nil, errTokenUnsigned
	}
	if b[0] != tokenVersion || len(b) < tokenHeaderSize+tokenMACSize || b[1] != kind ||
		base64.RawURLEncoding.EncodeToString(b) != token {
		return nil, errTokenMalformed
	}
	sealed, mac := b[:len(b)-tokenMACSize], b[len(b)-tokenMACSize:]
	id := [tokenKeyIDSize]byte(b[2:tokenHeaderSize])
	known := false
	for _, key := range *k.set.Load() {
		if key.id != id {
			continue
		}
		known = true
		if hmac.Equal(mac, tokenMAC(key.key, binding, sealed)) {
			return sealed[tokenHeaderSize:], nil
		}
	}
	if !known {
		return nil, errTokenKey
	}
	return nil, errTokenInvalid
}

// tokenMAC is the MAC of a sealed token's bytes before the MAC, for
// binding.
func tokenMAC(key []byte, binding string, sealed []byte) []byte {
	m := hmac.New(sha256.New, key)
	var n [binary.MaxVarintLen64]byte
	m.Write(n[:binary.PutUvarint(n[:], uint64(len(binding)))])
	m.Write([]byte(binding))
	m.Write(sealed)
	return m.Sum(nil)[:tokenMACSize]
}

// cursorBinding is what a page token is valid for: one region and desktop,
// so a token passed with another desktop is refused rather than followed.
func cursorBinding(region, desktop string) string { return region + "\x00" + desktop }

// sealCursor returns the page token of c for region and desktop; the
// cursor at the very start is "".
func (k *TokenKeys) sealCursor(region, desktop string, c upstream.Cursor) string {
	if c.Token == "" && c.Skip == 0 {
		return ""
	}
	payload := make([]byte, 0, binary.MaxVarintLen64+len(c.Token))
	payload = binary.AppendUvarint(payload, uint64(c.Skip))
	payload = append(payload, c.Token...)
	return k.seal(kindCursor, cursorBinding(region, desktop), payload)
}

// openCursor returns the cursor of a page token sealCursor made for the
// same region and desktop; "" is the start.
func (k *TokenKeys) openCursor(region, desktop, token string) (upstream.Cursor, error) {
	if token == "" {
		return upstream.Cursor{}, nil
	}
	payload, err := k.open(kindCursor, cursorBinding(region, desktop), token, maxTokenLength)
	if err != nil {
		return upstream.Cursor{}, err
	}
	skip, n := binary.Uvarint(payload)
	if n <= 0 || skip >= maxSkip {
		return upstream.Cursor{}, errTokenMalformed // sealCursor never makes this
	}
	c := upstream.Cursor{Token: string(payload[n:]), Skip: int(skip)}
	if c.Token == "" && c.Skip == 0 {
		return upstream.Cursor{}, errTokenMalformed // sealCursor never makes this
	}
	return c, nil
}

// fieldError is a token error of open for a token passed as field instead
// of page_token.
func fieldError(field string, err error) error {
	return errors.New(strings.Replace(err.Error(), "page_token", field, 1))
}
