package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// ReportConfigPath holds where the agent posts its attestations
// (ReportConfig), written by the provisioner.
const ReportConfigPath = "/etc/kmodctl/catalog.json"

// The units that post attestations: at every boot, and the daily
// re-check (a service its timer starts).
const (
	ReportUnit   = "kmodctl-report.service"
	RecheckUnit  = "kmodctl-recheck.service"
	RecheckTimer = "kmodctl-recheck.timer"
)

// ReportConfig is ReportConfigPath's content. The token is never in it:
// TokenFile names a file on the instance (written by cloud-init user data,
// say).
type ReportConfig struct {
	// URL is the catalog's base URL (https://host:port).
	URL string `json:"url"`
	// TokenFile holds the instance's catalog token (role instance).
	TokenFile string `json:"token_file"`
	// CAFile is a PEM CA file in the image for the catalog's TLS.
	CAFile string `json:"ca_file,omitempty"`
}

// ParseReportConfig decodes ReportConfigPath strictly.
func ParseReportConfig(data []byte) (*ReportConfig, error) {
	var c ReportConfig
	if err := decodeSettings(data, &c); err != nil {
		return nil, err
	}
	return &c, c.Validate()
}

// Validate checks the settings.
func (c *ReportConfig) Validate() error {
	if !strings.HasPrefix(c.URL, "https://") {
		return fmt.Errorf("url %q: want https://host[:port]", c.URL)
	}
	if c.TokenFile == "" {
		return errors.New("token_file: missing")
	}
	for n, p := range map[string]string{"token_file": c.TokenFile, "ca_file": c.CAFile} {
		if p != "" && (!path.IsAbs(p) || path.Clean(p) != p) {
			return fmt.Errorf("%s %q: want an absolute, clean path", n, p)
		}
	}
	return nil
}

// Attestation turns a verification (or the first-boot report's part of
// it) into the catalog's attestation. Its id is derived from the instance,
// the boot and the report's time, so posting the same result again is a
// no-op. loaded, when not nil, says which modules are loaded now (it
// replaces what the result recorded when it was written).
func Attestation(v *VerifyResult, report []byte, loaded func(name string) bool) *catalog.Attestation {
	sum := sha256.Sum256([]byte(v.InstanceID + "\n" + v.BootID + "\n" + v.GeneratedAt.UTC().Format(time.RFC3339Nano)))
	a := &catalog.Attestation{
		ID: "fb-" + hex.EncodeToString(sum[:16]), InstanceID: v.InstanceID, BootID: v.BootID, Kernel: v.Kernel,
		Arch: runtime.GOARCH, Status: string(v.Status), Covered: v.Covered, Pulled: v.Pulled,
		GeneratedAt: v.GeneratedAt.UTC(), Modules: []catalog.AttestedModule{}, Report: report,
	}
	for _, m := range v.Modules {
		am := catalog.AttestedModule{Name: m.Name, SHA256: m.ActualSHA256, Srcversion: m.Srcversion, Loaded: m.Loaded, Verified: m.Verified}
		if m.LoadedSrcversion != "" {
			am.Srcversion = m.LoadedSrcversion
		}
		if loaded != nil {
			am.Loaded = loaded(m.Name)
		}
		a.Modules = append(a.Modules, am)
	}
	return a
}

// ReportOptions configure PostReport.
type ReportOptions struct {
	// Root is the system's root ("" or "/": the running system).
	Root string
	// ConfigPath is the settings' path under Root (default
	// ReportConfigPath).
	ConfigPath string
	// For is how long to keep trying (default 10 minutes).
	For time.Duration
	// Logf reports each failed attempt.
	Logf func(format string, args ...any)
}

// PostReport posts this boot's attestation: the first-boot report when
// it is from this boot, else this boot's verification, with the modules'
// loaded state read now. It retries with backoff until opts.For is over;
// nothing waits for it, so it never holds the boot back.
func PostReport(ctx context.Context, opts ReportOptions) (*catalog.Attestation, error) {
	cfgPath := opts.ConfigPath
	if cfgPath == "" {
		cfgPath = ReportConfigPath
	}
	cfgPath = hostPath(opts.Root, cfgPath)
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("catalog settings: %w", err)
	}
	cfg, err := ParseReportConfig(data)
	if err != nil {
		return nil, fmt.Errorf("catalog settings %s: %w", cfgPath, err)
	}
	id := ReadIdentity(opts.Root)
	v, raw, err := thisBootResult(opts.Root, id.BootID)
	if err != nil {
		return nil, err
	}
	loaded := func(name string) bool {
		_, err := os.Stat(hostPath(opts.Root, "/sys/module/"+strings.ReplaceAll(name, "-", "_")))
		return err == nil
	}
	a := Attestation(v, raw, loaded)
	copts := []catalog.Option{catalog.WithTokenFile(hostPath(opts.Root, cfg.TokenFile)), catalog.WithRetries(0), catalog.WithTimeout(30 * time.Second)}
	if cfg.CAFile != "" {
		copts = append(copts, catalog.WithCAFile(hostPath(opts.Root, cfg.CAFile)))
	}
	cli, err := catalog.New(cfg.URL, copts...)
	if err != nil {
		return nil, err
	}
	limit := opts.For
	if limit <= 0 {
		limit = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	delay := time.Second
	for attempt := 1; ; attempt++ {
		_, err := cli.Attest(ctx, a)
		if err == nil {
			return a, nil
		}
		var se *catalog.StatusError
		if errors.As(err, &se) && se.Code >= 400 && se.Code < 500 && se.Code != 429 && se.Code != 408 {
			return a, err // refused: retrying would not help
		}
		if opts.Logf != nil {
			opts.Logf("attempt %d: %v (next in %v)", attempt, err, delay)
		}
		select {
		case <-ctx.Done():
			return a, fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Minute)
	}
}

// thisBootResult is the newest result of this boot: the first-boot
// report (written after the boot's verification) or a later verification
// (the daily re-check).
func thisBootResult(root, bootID string) (*VerifyResult, []byte, error) {
	var best *VerifyResult
	var bestRaw []byte
	if raw, err := os.ReadFile(hostPath(root, ReportPath)); err == nil {
		var r Report
		if json.Unmarshal(raw, &r) == nil && r.BootID != "" && r.BootID == bootID {
			best, bestRaw = &r.VerifyResult, raw
		}
	}
	raw, err := os.ReadFile(hostPath(root, VerifyPath))
	if err != nil {
		if best != nil {
			return best, bestRaw, nil
		}
		return nil, nil, fmt.Errorf("no result of this boot to report (%s, %s): %w", ReportPath, VerifyPath, err)
	}
	var v VerifyResult
	if err := json.Unmarshal(raw, &v); err != nil {
		if best != nil {
			return best, bestRaw, nil
		}
		return nil, nil, fmt.Errorf("%s: %w", VerifyPath, err)
	}
	if best != nil && !v.GeneratedAt.After(best.GeneratedAt) {
		return best, bestRaw, nil
	}
	return &v, raw, nil
}
