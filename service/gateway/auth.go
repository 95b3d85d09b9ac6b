package gateway

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
)

// MinBearerTokenLength is the shortest bearer token the tokens file may
// hold: a short token can be guessed.
const MinBearerTokenLength = 16

// bearerAuth admits a request only with "Authorization: Bearer <token>" for
// a token of the tokens file. A line of the file holds a token, or a name
// and a token separated by white space; blank lines and lines starting with
// # are ignored. The name (else a short hash of the token) is the token's
// id in logs and limits: never the token itself. Tokens are compared in
// constant time, against every token, so neither the answer nor its timing
// tells how close a guess was. The file is read again by reload (on
// SIGHUP); a failed reload keeps the tokens in force, and requests in
// flight are never affected.
type bearerAuth struct {
	path    string
	entries atomic.Pointer[[]bearerToken]
}

type bearerToken struct {
	digest [sha256.Size]byte // SHA-256 of the token
	id     string
}

// errUnauthenticated is all a refused caller learns.
var errUnauthenticated = errors.New("missing or invalid bearer token")

// tokenNamePattern is what a token's name in the tokens file may be.
var tokenNamePattern = regexp.MustCompile(`^[A-Za-z0-9._:@/-]{1,64}$`)

func newBearerAuth(path string) (*bearerAuth, error) {
	a := &bearerAuth{path: path}
	if err := a.reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// reload reads the tokens file and, if it is valid, puts its tokens in force.
// Its errors name the line, never the token.
func (a *bearerAuth) reload() error {
	data, err := os.ReadFile(a.path)
	if err != nil {
		return fmt.Errorf("reading the auth tokens file: %w", err)
	}
	var entries []bearerToken
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		var name, token string
		switch len(fields) {
		case 1:
			token = fields[0]
		case 2:
			name, token = fields[0], fields[1]
			if !tokenNamePattern.MatchString(name) || names[name] {
				return fmt.Errorf("%s line %d: a token's name must be unique and 1-64 letters, digits or ._:@/-", a.path, n)
			}
			names[name] = true
		default:
			return fmt.Errorf("%s line %d: want a token, or a name and a token", a.path, n)
		}
		if len(token) < MinBearerTokenLength {
			return fmt.Errorf("%s line %d: the token has %d characters; at least %d are needed (e.g. openssl rand -base64 24)", a.path, n, len(token), MinBearerTokenLength)
		}
		e := bearerToken{digest: sha256.Sum256([]byte(token)), id: name}
		if e.id == "" {
			e.id = fmt.Sprintf("sha256:%x", e.digest[:4])
		}
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the auth tokens file: %w", err)
	}
	if len(entries) == 0 {
		return fmt.Errorf("the auth tokens file %s has no tokens", a.path)
	}
	a.entries.Store(&entries)
	return nil
}

// tokens reports how many tokens are in force.
func (a *bearerAuth) tokens() int { return len(*a.entries.Load()) }

// admits returns the id of the token in h's Authorization header, and
// whether it is one of the tokens in force.
func (a *bearerAuth) admits(h http.Header) (id string, ok bool) {
	token, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", false
	}
	// Comparing fixed-size digests keeps the comparison's time independent
	// of the token's length and content; every entry is compared.
	got := sha256.Sum256([]byte(token))
	entries := *a.entries.Load()
	match := -1
	for i, e := range entries {
		match = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(got[:], e.digest[:]), i, match)
	}
	if match < 0 {
		return "", false
	}
	return entries[match].id, true
}
