// The reference for kube-beat's cron parser: robfig/cron v3 (Debian's
// golang-github-robfig-cron-dev, the version Kubernetes CronJob uses), fed the
// same inputs. Reads "expr<TAB>zone<TAB>from<TAB>n" lines, writes one JSON
// object per line: {"expr","tz","from","next":[...]} or {..., "error"}.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	cron "github.com/robfig/cron"
)

type result struct {
	Expr  string   `json:"expr"`
	TZ    string   `json:"tz"`
	From  string   `json:"from"`
	Next  []string `json:"next"`
	Error string   `json:"error,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		line := in.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, "\t")
		if len(parts) != 4 {
			fmt.Fprintf(os.Stderr, "bad line: %q\n", line)
			os.Exit(2)
		}
		r := result{Expr: parts[0], TZ: parts[1], From: parts[2], Next: []string{}}
		loc, err := time.LoadLocation(parts[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "bad zone: %v\n", err)
			os.Exit(2)
		}
		from, err := time.Parse(time.RFC3339, parts[2])
		if err != nil {
			fmt.Fprintf(os.Stderr, "bad time: %v\n", err)
			os.Exit(2)
		}
		n, _ := strconv.Atoi(parts[3])
		sched, err := cron.ParseStandard(parts[0])
		if err != nil {
			r.Error = err.Error()
		} else {
			t := from.In(loc)
			for i := 0; i < n; i++ {
				t = sched.Next(t)
				if t.IsZero() {
					break
				}
				// RFC3339Nano prints whole seconds as RFC3339 does and keeps a
				// sub-second part when there is one (@every from a sub-second start).
				r.Next = append(r.Next, t.UTC().Format(time.RFC3339Nano))
			}
		}
		if err := out.Encode(r); err != nil {
			os.Exit(1)
		}
	}
}
