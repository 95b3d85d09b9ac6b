package main_test

import (
	"bufio"
	"flag"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/service/gateway"
)

// cmdOnlyFlags are README rows the daemon's main handles before the
// gateway's flags are parsed.
var cmdOnlyFlags = []string{"--version"}

// readmeRow is one row of the README's configuration table.
type readmeRow struct {
	flags    []string // "--upstream-qps", ...
	envs     []string // the code spans of the environment column
	defaults string   // the default column as written
}

var codeSpan = regexp.MustCompile("`([^`]*)`")

func spans(cell string) []string {
	var out []string
	for _, m := range codeSpan.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}

// readmeConfiguration returns the rows of the one table in the README's
// "Configuration" section.
func readmeConfiguration(t *testing.T) []readmeRow {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []readmeRow
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = line == "## Configuration"
			continue
		}
		if !in || !strings.HasPrefix(line, "| `--") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 4 {
			t.Fatalf("README configuration row of %d cells, want 4 (flag, environment, default, meaning): %s", len(cells), line)
		}
		rows = append(rows, readmeRow{flags: spans(cells[0]), envs: spans(cells[1]), defaults: strings.TrimSpace(cells[2])})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatal("the README has no configuration table")
	}
	return rows
}

// defaultsOf splits a row's default cell into one value per flag: "none"
// (and the regional endpoint) is the empty value; otherwise the code
// spans, one per flag, or one for all.
func (r readmeRow) defaultsOf() ([]string, bool) {
	if strings.HasPrefix(r.defaults, "none") || strings.HasPrefix(r.defaults, "regional") {
		return make([]string, len(r.flags)), true
	}
	vals := spans(r.defaults)
	switch {
	case len(vals) == len(r.flags):
		return vals, true
	case len(r.flags) == 1 && len(vals) > 0: // "`0`: `no-store`": the value, then what it means
		return vals[:1], true
	case len(vals) == 1:
		out := make([]string, len(r.flags))
		for i := range out {
			out[i] = vals[0]
		}
		return out, true
	}
	return nil, false
}

// sameValue reports whether the flag name of a fresh flag set, set to s,
// reads as its default: the README's "2m" and the flag's "2m0s" agree.
func sameValue(name, s string) (bool, string) {
	cfg := gateway.DefaultConfig()
	fs := cfg.FlagSet(io.Discard)
	f := fs.Lookup(name)
	if err := fs.Set(name, s); err != nil {
		return false, err.Error()
	}
	return f.Value.String() == f.DefValue, f.Value.String()
}

// TestREADMEListsEveryFlagWithItsDefault: the README's configuration table
// names exactly the flags of Config.FlagSet, each with its environment
// variable and the default DefaultConfig gives it.
func TestREADMEListsEveryFlagWithItsDefault(t *testing.T) {
	t.Parallel()
	cfg := gateway.DefaultConfig()
	fs := cfg.FlagSet(io.Discard)
	var want []string
	fs.VisitAll(func(f *flag.Flag) { want = append(want, f.Name) })
	var listed []string
	for _, row := range readmeConfiguration(t) {
		if len(row.flags) == 1 && slices.Contains(cmdOnlyFlags, row.flags[0]) {
			continue
		}
		vals, ok := row.defaultsOf()
		if !ok {
			t.Errorf("README row %q: default %q gives no value per flag", row.flags, row.defaults)
			continue
		}
		for i, name := range row.flags {
			name = strings.TrimPrefix(name, "--")
			listed = append(listed, name)
			if fs.Lookup(name) == nil {
				t.Errorf("README lists --%s, which imagerecordsd does not have", name)
				continue
			}
			if same, got := sameValue(name, vals[i]); !same {
				t.Errorf("README: --%s defaults to %q (reads as %s), but DefaultConfig gives %q", name, vals[i], got, fs.Lookup(name).DefValue)
			}
			if !envMatches(row.envs, i, gateway.EnvName(name)) {
				t.Errorf("README: --%s has environment %q, want %s", name, row.envs, gateway.EnvName(name))
			}
		}
	}
	slices.Sort(want)
	slices.Sort(listed)
	if !slices.Equal(listed, slices.Compact(slices.Clone(listed))) {
		t.Errorf("README lists a flag twice: %q", listed)
	}
	for _, name := range want {
		if !slices.Contains(listed, name) {
			t.Errorf("README's configuration table lacks --%s (default %q)", name, fs.Lookup(name).DefValue)
		}
	}
}

// envMatches reports whether the README's environment cell names env for
// the i-th flag of its row: in full, as "…_SUFFIX" after the first, or as
// a shared "PREFIX_…".
func envMatches(envs []string, i int, env string) bool {
	if len(envs) == 0 {
		return false
	}
	e := envs[min(i, len(envs)-1)]
	switch {
	case e == env:
		return true
	case strings.HasPrefix(e, "…"):
		return strings.HasSuffix(env, strings.TrimPrefix(e, "…"))
	case strings.HasSuffix(e, "…"):
		return strings.HasPrefix(env, strings.TrimSuffix(e, "…"))
	}
	return false
}

// helpDefault matches the default PrintDefaults adds to a flag's usage.
var helpDefault = regexp.MustCompile(`\(default (.*)\)$`)

// TestHelpListsEveryFlagWithItsDefault: the real binary's --help lists
// exactly the flags of Config.FlagSet, each with DefaultConfig's default
// (PrintDefaults leaves a zero default out).
func TestHelpListsEveryFlagWithItsDefault(t *testing.T) {
	t.Parallel()
	stdout, stderr, code := runBinary(t, gatewayBinary(t), cleanEnv(), "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d, stderr %q", code, stderr)
	}
	helped := map[string]string{} // flag: the default --help states, "" for none
	var current string
	for line := range strings.SplitSeq(stdout, "\n") {
		if rest, ok := strings.CutPrefix(line, "  -"); ok {
			current = strings.Fields(rest)[0]
			helped[current] = ""
		}
		if m := helpDefault.FindStringSubmatch(line); m != nil && current != "" {
			helped[current] = m[1]
		}
	}
	cfg := gateway.DefaultConfig()
	fs := cfg.FlagSet(io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		stated, ok := helped[f.Name]
		if !ok {
			t.Errorf("--help lacks -%s", f.Name)
			return
		}
		delete(helped, f.Name)
		if stated == "" {
			if !slices.Contains([]string{"", "0", "0s", "false"}, f.DefValue) {
				t.Errorf("--help states no default for -%s, whose default is %q", f.Name, f.DefValue)
			}
			return
		}
		if u, err := strconv.Unquote(stated); err == nil {
			stated = u
		}
		if same, got := sameValue(f.Name, stated); !same {
			t.Errorf("--help: -%s defaults to %q (reads as %s), but DefaultConfig gives %q", f.Name, stated, got, f.DefValue)
		}
	})
	for name := range helped {
		t.Errorf("--help lists -%s, which Config.FlagSet does not have", name)
	}
	if !strings.Contains(stdout, "imagerecordsd --version") {
		t.Error("--help does not mention --version")
	}
}
