package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// unit says how a figure prints.
type unit int

const (
	unitCount    unit = iota // an integer count, with a suffix
	unitFloat                // a number with two decimals, with a suffix
	unitDuration             // seconds, printed as µs, ms or s
	unitBytes                // bytes, printed as KiB or MiB
	unitRate                 // per second, with a suffix
)

// verdict is whether a figure meets its target.
type verdict int

const (
	noTarget verdict = iota
	met
	missed
)

func check(ok bool) verdict {
	if ok {
		return met
	}
	return missed
}

// row is one line of the table: a figure through the gateway, the
// reference figure measured in the same run, and the target.
type row struct {
	scenario  int
	metric    string
	unit      unit
	suffix    string
	measured  float64
	reference float64 // NaN when there is none
	target    string  // "" when there is none
	verdict   verdict
}

// none marks a row without a reference figure.
func none() float64 { return math.NaN() }

func seconds(d time.Duration) float64 { return d.Seconds() }

// report is what a scenario hands back: rows for the table and notes that
// say how the figures were made.
type report struct {
	rows  []row
	notes []string
}

func (r *report) add(x row) { r.rows = append(r.rows, x) }
func (r *report) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r row) format(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	var s string
	switch r.unit {
	case unitCount:
		s = fmt.Sprintf("%.0f", v)
	case unitFloat:
		s = fmt.Sprintf("%.2f", v)
	case unitDuration:
		switch a := math.Abs(v); {
		case a < 1e-3:
			s = fmt.Sprintf("%.0f µs", v*1e6)
		case a < 1:
			s = fmt.Sprintf("%.2f ms", v*1e3)
		default:
			s = fmt.Sprintf("%.3f s", v)
		}
	case unitBytes:
		if math.Abs(v) < 1<<20 {
			s = fmt.Sprintf("%.1f KiB", v/(1<<10))
		} else {
			s = fmt.Sprintf("%.1f MiB", v/(1<<20))
		}
	case unitRate:
		s = fmt.Sprintf("%.0f", v)
	}
	if r.suffix != "" {
		s += " " + r.suffix
	}
	return s
}

func (r row) ratio() string {
	if math.IsNaN(r.reference) || math.IsNaN(r.measured) || r.reference == 0 {
		return "—"
	}
	return fmt.Sprintf("%.3f", r.measured/r.reference)
}

// printTable prints every row in one table, then the notes of each
// scenario.
func printTable(w io.Writer, reports map[int]*report, order []int) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tmetric\tgateway\treference\tratio\ttarget\tmet")
	fmt.Fprintln(tw, "-\t------\t-------\t---------\t-----\t------\t---")
	for _, n := range order {
		rep := reports[n]
		if rep == nil {
			continue
		}
		for _, r := range rep.rows {
			v := ""
			switch r.verdict {
			case met:
				v = "yes"
			case missed:
				v = "NO"
			}
			target := r.target
			if target == "" {
				target = "—"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.scenario, r.metric, r.format(r.measured), r.format(r.reference), r.ratio(), target, v)
		}
	}
	tw.Flush()
	for _, n := range order {
		rep := reports[n]
		if rep == nil || len(rep.notes) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nScenario %d notes:\n", n)
		for _, s := range rep.notes {
			fmt.Fprintf(w, "  - %s\n", strings.ReplaceAll(s, "\n", "\n    "))
		}
	}
}
