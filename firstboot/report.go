package firstboot

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
)

// Where the agent writes its results on the running system.
const (
	// ReportPath is Run's report.
	ReportPath = "/var/lib/kmodctl/report.json"
	// VerifyPath is Verify's result, for this boot.
	VerifyPath = "/run/kmodctl/verify.json"
	// LockdownReportPath is Lockdown's result, for this boot.
	LockdownReportPath = "/run/kmodctl/lockdown.json"
	// BlockedPath is the runtime modprobe.d file blocking the drifted
	// modules for this boot.
	BlockedPath = "/run/modprobe.d/kmodctl-blocked.conf"
	// ModulesDisabledPath is the sysctl kernel.modules_disabled.
	ModulesDisabledPath = "/proc/sys/kernel/modules_disabled"
)

// Policy is what a problem does to the exit status: PolicyWarn reports it
// and succeeds, PolicyFail fails.
type Policy string

// Policies.
const (
	PolicyWarn Policy = "warn"
	PolicyFail Policy = "fail"
)

// Status is the outcome of a check or run under the policies.
type Status string

// Statuses, from best to worst.
const (
	StatusOK   Status = "ok"
	StatusWarn Status = "warn"
	StatusFail Status = "fail"
)

func (s Status) rank() int {
	switch s {
	case StatusOK:
		return 0
	case StatusWarn:
		return 1
	}
	return 2
}

// worse returns the worse of s and t.
func (s Status) worse(t Status) Status {
	if t.rank() > s.rank() {
		return t
	}
	return s
}

// statusOf is the status a problem under policy p gives.
func statusOf(p Policy) Status {
	if p == PolicyWarn {
		return StatusWarn
	}
	return StatusFail
}

// ModuleReport is what the agent found about one managed module.
type ModuleReport struct {
	Name string `json:"name"`
	// Path is the module's file in the image, as the manifest gives it.
	Path string `json:"path"`
	// ExpectedSHA256 is the manifest's, ActualSHA256 the file's ("" when
	// it could not be read).
	ExpectedSHA256 string `json:"expected_sha256"`
	ActualSHA256   string `json:"actual_sha256"`
	// SignatureOK: the signature verifies against the certificate the
	// manifest records for the module. It is checked only when the
	// SHA-256 matches (a drifted file is not parsed).
	SignatureOK bool   `json:"signature_ok"`
	Signer      string `json:"signer,omitempty"`
	// Srcversion is the manifest's; LoadedSrcversion that of the module
	// found loaded before the agent loaded anything.
	Srcversion       string `json:"srcversion,omitempty"`
	LoadedSrcversion string `json:"loaded_srcversion,omitempty"`
	// Initramfs is the check of the module's copy in the initramfs, when
	// the manifest records one.
	Initramfs *InitramfsCheck `json:"initramfs,omitempty"`
	// Early and Load are the manifest's: loaded from the initramfs, listed
	// in modules-load.d. Run loads a module when either is set.
	Early bool `json:"early"`
	Load  bool `json:"load"`
	// Verified: every check passed. A module that is not verified is
	// drifted: Blocked for this boot and never loaded by the agent.
	Verified bool `json:"verified"`
	Blocked  bool `json:"blocked"`
	// AlreadyLoaded: /sys/module/NAME existed before the agent loaded
	// anything (initramfs, systemd-modules-load, udev).
	AlreadyLoaded bool `json:"already_loaded"`
	// Loaded: /sys/module/NAME exists (after loading, for Run).
	Loaded bool `json:"loaded"`
	// Taint is /sys/module/NAME/taint (kernel taint letters, "" when
	// none); Params the readable files of /sys/module/NAME/parameters.
	Taint  string            `json:"taint"`
	Params map[string]string `json:"params"`
	// Errors says what failed, one sentence each.
	Errors []string `json:"errors"`
}

// InitramfsCheck is the comparison of a module's initramfs copy.
type InitramfsCheck struct {
	// Image is the initramfs image path, Path the copy's path in it (""
	// when it was not found, or not looked for).
	Image          string `json:"image"`
	Path           string `json:"path,omitempty"`
	ExpectedSHA256 string `json:"expected_sha256"`
	ActualSHA256   string `json:"actual_sha256"`
	OK             bool   `json:"ok"`
	// ImageSHA256 is the image file's SHA-256, computed when the manifest
	// records the file the build left (path, size and SHA-256) and the
	// image has that path and size. When it is the recorded one the file
	// is the build's byte for byte, whose copy the manifest records: the
	// image is not decoded (ActualSHA256 is then the manifest's, Path "").
	// Walked: it was decoded, the copy found and hashed (no record, or
	// the file differs from it: a regenerated image, or a changed one).
	ImageSHA256 string `json:"image_sha256,omitempty"`
	Walked      bool   `json:"walked"`
}

// VerifyResult is what Verify found (and Run, which embeds it). Its JSON is
// VerifyPath's.
type VerifyResult struct {
	InstanceID string `json:"instance_id"`
	// InstanceIDSource is SourceCloudInit or SourceMachineID.
	InstanceIDSource string `json:"instance_id_source"`
	BootID           string `json:"boot_id"`
	Kernel           string `json:"kernel"`
	// Covered: the manifest lists the kernel, or its modules were pulled
	// (Pulled; PulledFrom names the bundle manifest).
	Covered    bool           `json:"covered"`
	Pulled     bool           `json:"pulled,omitempty"`
	PulledFrom string         `json:"pulled_from,omitempty"`
	Modules    []ModuleReport `json:"modules"`
	// GeneratedAt is when the result was made (Options.Now).
	GeneratedAt time.Time `json:"generated_at"`
	// Manifest is the manifest's path in the image; ManifestError why it
	// could not be used (missing, unreadable, malformed).
	Manifest      string `json:"manifest"`
	ManifestError string `json:"manifest_error,omitempty"`
	OnDrift       Policy `json:"on_drift"`
	OnUncovered   Policy `json:"on_uncovered"`
	// Total counts the kernel's managed modules, Verified those that
	// passed every check; Drifted names the others, Blocked those written
	// to BlockedFile.
	Total       int      `json:"total"`
	Verified    int      `json:"verified"`
	Drifted     []string `json:"drifted"`
	Blocked     []string `json:"blocked"`
	BlockedFile string   `json:"blocked_file"`
	// Errors are the agent's own failures (not a module's); Warnings what
	// it could not read but did not need (identity).
	Errors   []string `json:"errors"`
	Warnings []string `json:"warnings"`
	// Status is the outcome under the policies; SummaryLine is Summary().
	Status      Status `json:"status"`
	SummaryLine string `json:"summary"`
}

// Report is what Run did. Its JSON is ReportPath's.
type Report struct {
	VerifyResult
	// ToLoad counts the modules Run is to have loaded (verified or not:
	// those whose manifest entry has early or load); Loaded those of them
	// verified and loaded; LoadFailed names the verified ones that did not
	// load.
	ToLoad     int      `json:"to_load"`
	Loaded     int      `json:"loaded"`
	LoadFailed []string `json:"load_failed"`
	// Lockdown is the lockdown's outcome, when Options.Lockdown asked for
	// it.
	Lockdown *LockdownResult `json:"lockdown,omitempty"`
	// Pull is the last pull's outcome for the running kernel (the pull
	// unit writes it; Run keeps it).
	Pull *PullResult `json:"pull,omitempty"`
}

// LockdownResult is the outcome of setting kernel.modules_disabled.
type LockdownResult struct {
	// Requested: Options.Lockdown; Applied: modules_disabled reads 1
	// after the write; AlreadySet: it read 1 before.
	Requested  bool `json:"requested"`
	Applied    bool `json:"applied"`
	AlreadySet bool `json:"already_set"`
	// Missing names the managed modules (early or load) that were not
	// loaded when the lockdown was applied (Lockdown only).
	Missing []string `json:"missing,omitempty"`
	Error   string   `json:"error,omitempty"`
	// The fields below are set by Lockdown (the lockdown-only command).
	InstanceID  string    `json:"instance_id,omitempty"`
	BootID      string    `json:"boot_id,omitempty"`
	Kernel      string    `json:"kernel,omitempty"`
	GeneratedAt time.Time `json:"generated_at,omitzero"`
	Status      Status    `json:"status,omitempty"`
	SummaryLine string    `json:"summary,omitempty"`
}

// Summary is Verify's console line: `kmodctl verify: N/M modules
// verified`, then what is wrong.
func (v *VerifyResult) Summary() string {
	var b strings.Builder
	b.WriteString("kmodctl verify: ")
	switch {
	case v.ManifestError != "":
		fmt.Fprintf(&b, "manifest error: %s", v.ManifestError)
	case !v.Covered:
		fmt.Fprintf(&b, "uncovered kernel %s: the manifest has no modules for it", v.Kernel)
	default:
		fmt.Fprintf(&b, "%d/%d modules verified", v.Verified, v.Total)
		if v.Pulled {
			b.WriteString(" (pulled)")
		}
		if len(v.Blocked) > 0 {
			fmt.Fprintf(&b, "; blocked: %s", strings.Join(v.Blocked, ", "))
		} else if len(v.Drifted) > 0 {
			fmt.Fprintf(&b, "; drifted: %s", strings.Join(v.Drifted, ", "))
		}
	}
	v.appendProblems(&b)
	return b.String()
}

func (v *VerifyResult) appendProblems(b *strings.Builder) {
	if len(v.Errors) > 0 {
		fmt.Fprintf(b, "; %d error(s): %s", len(v.Errors), v.Errors[0])
	}
	if v.Status == StatusFail {
		b.WriteString(" [fail]")
	} else if v.Status == StatusWarn {
		b.WriteString(" [warn]")
	}
}

// Summary is Run's console line: `kmodctl: N/M modules verified and
// loaded`, then what is wrong and the lockdown.
func (r *Report) Summary() string {
	var b strings.Builder
	b.WriteString("kmodctl: ")
	switch {
	case r.ManifestError != "":
		fmt.Fprintf(&b, "manifest error: %s; no module loaded", r.ManifestError)
	case !r.Covered:
		fmt.Fprintf(&b, "uncovered kernel %s: the manifest has no modules for it; no module loaded", r.Kernel)
	default:
		fmt.Fprintf(&b, "%d/%d modules verified and loaded", r.Loaded, r.ToLoad)
		if n := r.Total - r.ToLoad; n > 0 {
			fmt.Fprintf(&b, " (%d more not to load)", n)
		}
		if len(r.Drifted) > 0 {
			fmt.Fprintf(&b, "; drifted, not loaded: %s", strings.Join(r.Drifted, ", "))
		}
		if len(r.LoadFailed) > 0 {
			fmt.Fprintf(&b, "; failed to load: %s", strings.Join(r.LoadFailed, ", "))
		}
	}
	if l := r.Lockdown; l != nil && l.Requested {
		if l.Applied {
			b.WriteString("; lockdown: kernel.modules_disabled=1")
		} else {
			b.WriteString("; lockdown failed: " + l.Error)
		}
	}
	r.appendProblems(&b)
	return b.String()
}

// Summary is Lockdown's console line.
func (l *LockdownResult) Summary() string {
	var b strings.Builder
	b.WriteString("kmodctl lockdown: ")
	if l.Applied {
		b.WriteString("kernel.modules_disabled=1")
		if l.AlreadySet {
			b.WriteString(" (already set)")
		}
	} else {
		b.WriteString("failed: " + l.Error)
	}
	if len(l.Missing) > 0 {
		fmt.Fprintf(&b, "; managed modules not loaded: %s", strings.Join(l.Missing, ", "))
	}
	if l.Status == StatusFail {
		b.WriteString(" [fail]")
	}
	return b.String()
}

// WriteReport writes r as indented JSON to path atomically (a reader sees
// the old report or the new one), creating path's folder. path is a host
// path: join Options.Root yourself.
func WriteReport(path string, r *Report) error { return writeJSON(path, r) }

// WriteVerifyResult writes v like WriteReport.
func WriteVerifyResult(path string, v *VerifyResult) error { return writeJSON(path, v) }

// WriteLockdownResult writes l like WriteReport.
func WriteLockdownResult(path string, l *LockdownResult) error { return writeJSON(path, l) }

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, data, 0o644)
}

// WritePull records a pull's outcome in the report at path: the report's
// Pull field is set (the rest kept), or a report holding only the kernel
// and the pull is written when there is none yet.
func WritePull(path string, p *PullResult) error {
	r := &Report{}
	if data, err := os.ReadFile(path); err == nil {
		if json.Unmarshal(data, r) != nil {
			r = &Report{}
		}
	}
	if r.Kernel == "" {
		r.Kernel = p.Kernel
		r.GeneratedAt = time.Now().UTC()
	}
	r.Pull = p
	return writeJSON(path, r)
}

// KeepPull copies into r the pull recorded for r's kernel in the report at
// path (Run's report replaces the file; the pull's outcome stays).
func KeepPull(path string, r *Report) {
	old := &Report{}
	data, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(data, old) != nil {
		return
	}
	if old.Pull != nil && old.Pull.Kernel == r.Kernel && r.Pull == nil {
		r.Pull = old.Pull
	}
}
