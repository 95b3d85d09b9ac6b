package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/imagerecords/imagerecords/service"
)

// tokenKeyFile holds the keys of --token-key-file: one key per line (blank
// lines and lines starting with # are ignored), each at least
// service.MinTokenKeyBytes long. The first key seals new page and resume
// tokens; every key opens them. To rotate: put the new key first and keep
// the old one below it for as long as callers may hold its tokens (a
// stream's resume token lives as long as the caller keeps it; a day is
// plenty for most), on every replica, then SIGHUP or restart them; then
// drop the old key.
type tokenKeyFile struct {
	path string
	keys *service.TokenKeys
}

func loadTokenKeyFile(path string) (*tokenKeyFile, error) {
	keys, err := readTokenKeys(path)
	if err != nil {
		return nil, err
	}
	k, err := service.NewTokenKeys(keys...)
	if err != nil {
		return nil, fmt.Errorf("--token-key-file %s: %w", path, err)
	}
	return &tokenKeyFile{path: path, keys: k}, nil
}

// reload reads the file again and puts its keys in force; on error the
// keys in force stay.
func (f *tokenKeyFile) reload() error {
	keys, err := readTokenKeys(f.path)
	if err != nil {
		return err
	}
	if err := f.keys.Replace(keys...); err != nil {
		return fmt.Errorf("--token-key-file %s: %w", f.path, err)
	}
	return nil
}

// readTokenKeys returns the keys of a key file. Its errors name the line,
// never the key.
func readTokenKeys(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading --token-key-file: %w", err)
	}
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		keys = append(keys, []byte(line))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading --token-key-file: %w", err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("--token-key-file %s holds no key", path)
	}
	return keys, nil
}
