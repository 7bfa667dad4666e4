package loadconf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// The tests in this file hand the rendered modprobe.d files to the real
// modprobe (kmod), with -C pointing at them instead of /etc, and -d/-S at
// the fixture root file system and its kernel: it must parse them and
// apply them as Render meant.

type realModprobe struct {
	bin, root, kver string
}

func newModprobe(t *testing.T) realModprobe {
	t.Helper()
	return realModprobe{bin: fixture.Tool(t, "modprobe"), root: fixture.Rootfs(t), kver: fixture.KVER(t)}
}

// run runs modprobe with the configuration folder conf.
func (m realModprobe) run(t *testing.T, conf string, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"-C", conf, "-d", m.root, "-S", m.kver}, args...)
	out, err := exec.Command(m.bin, full...).CombinedOutput()
	return string(out), err
}

// writeModprobeD writes the rendered /etc/modprobe.d files into a new
// folder and returns it.
func writeModprobeD(t *testing.T, files []File) string {
	t.Helper()
	dir := t.TempDir()
	n := 0
	for _, f := range files {
		if filepath.Dir(f.Path) == "/etc/modprobe.d" {
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(f.Path)), f.Content, f.Mode); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no modprobe.d file rendered")
	}
	return dir
}

// kmodForm is a rendered modprobe.d line as modprobe --showconfig prints
// it: kmod turns '-' into '_' in the module name of options, blacklist,
// install and softdep and in the wildcard of alias (outside brackets),
// and kmod 30 prints softdep without the blank before "post:", so softdep
// lines are compared without blanks.
func kmodForm(l string) string {
	f := strings.Fields(l)
	switch f[0] {
	case "options", "blacklist", "install", "alias":
		f[1] = normName(f[1])
	case "softdep":
		f[1] = normName(f[1])
		return strings.Join(f, "")
	}
	return strings.Join(f, " ")
}

func TestModprobeShowconfig(t *testing.T) {
	mp := newModprobe(t)
	files, err := Render(Options{
		Profiles: []string{"aws", "kubernetes"},
		Modprobe: []ModprobeConf{{
			Name:      "kmodctl-test",
			Options:   map[string]string{"dummy": "numdummies=3", "snd-dummy": `id="a b" enable=1`},
			Blacklist: []string{"pcspkr", "snd-pcsp"},
			Softdeps:  map[string]string{"kmodtest-dep": "pre: dummy post: loop"},
			Installs:  map[string]string{"fake-mod": "/sbin/modprobe --ignore-install dummy"},
			Aliases:   map[string]string{"kmodctl-alias-*": "dummy"},
		}},
		DisableModules: []string{"cramfs", "usb-storage"},
		Header:         "# managed by packer-plugin-kmod",
	})
	if err != nil {
		t.Fatal(err)
	}
	conf := writeModprobeD(t, files)
	out, err := mp.run(t, conf, "--showconfig")
	if err != nil {
		t.Fatalf("modprobe --showconfig: %v\n%s", err, out)
	}
	cfg, _, ok := strings.Cut(out, "# End of configuration files")
	if !ok {
		t.Fatalf("no end-of-configuration marker in:\n%s", out)
	}
	got := map[string]bool{}
	for _, l := range strings.Split(cfg, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			got[kmodForm(l)] = true
		}
	}
	n := 0
	for _, f := range files {
		if filepath.Dir(f.Path) != "/etc/modprobe.d" {
			continue
		}
		for _, l := range settings(f) {
			n++
			if !got[kmodForm(l)] {
				t.Errorf("%s: %q is not in modprobe's configuration (as %q)", f.Path, l, kmodForm(l))
			}
		}
	}
	if n < 12 {
		t.Errorf("only %d lines checked", n)
	}
}

func TestModprobeAppliesSettings(t *testing.T) {
	mp := newModprobe(t)
	files, err := Render(Options{Profiles: []string{"aws"}, DisableModules: []string{"cramfs"}})
	if err != nil {
		t.Fatal(err)
	}
	conf := writeModprobeD(t, files)

	// The aws option reaches nvme_core's insmod when nvme is loaded.
	out, err := mp.run(t, conf, "--show-depends", "nvme")
	if err != nil {
		t.Fatalf("modprobe --show-depends nvme: %v\n%s", err, out)
	}
	if !regexpLine(out, "/nvme-core.ko io_timeout=4294967295") {
		t.Errorf("nvme_core is not loaded with io_timeout=4294967295:\n%s", out)
	}
	// A disabled module runs /bin/false instead.
	out, err = mp.run(t, conf, "--show-depends", "cramfs")
	if err != nil || strings.TrimSpace(out) != "install /bin/false" {
		t.Errorf("modprobe --show-depends cramfs = %q, %v; want install /bin/false", out, err)
	}
}

func regexpLine(out, substr string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "insmod ") && strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// TestModprobeBlacklistENA: with a third-party NIC on alibaba, the ENA
// device's modalias no longer loads ena when blacklists apply (-b, as
// udev and systemd-modules-load do); without the profile it does.
func TestModprobeBlacklistENA(t *testing.T) {
	mp := newModprobe(t)
	// An ENA virtual function as the kernel reports it.
	const modalias = "pci:v00001D0Fd0000EC20sv00001D0Fsd0000EC20bc02sc00i00"
	empty := t.TempDir()
	out, err := mp.run(t, empty, "--show-depends", "-b", modalias)
	if err != nil || !regexpLine(out, "/ena.ko") {
		t.Fatalf("without configuration the ENA modalias does not resolve to ena: %v\n%s", err, out)
	}
	files, err := Render(Options{Profiles: []string{"alibaba"}, ThirdPartyNIC: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err = mp.run(t, writeModprobeD(t, files), "--show-depends", "-b", modalias)
	if err != nil || strings.Contains(out, "ena.ko") {
		t.Errorf("ena still loads by alias with the alibaba ThirdPartyNIC blacklist: %v\n%s", err, out)
	}
}

// TestProfilesAgainstDebianKernel: every module a profile loads exists in
// the fixture's Debian kernel (as a module or built in), and every
// option a profile sets is a parameter of its module, of a type that
// holds the value.
func TestProfilesAgainstDebianKernel(t *testing.T) {
	mp := newModprobe(t)
	empty := t.TempDir()
	paths := map[string]string{}
	for _, p := range Profiles() {
		for _, m := range p.Load {
			out, err := mp.run(t, empty, "--show-depends", m)
			if err != nil {
				t.Errorf("%s: module %s is not in kernel %s: %v\n%s", p.Name, m, mp.kver, err, out)
				continue
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			last := lines[len(lines)-1]
			if f := strings.Fields(last); len(f) >= 2 && f[0] == "insmod" {
				paths[m] = f[1]
			} else if !strings.HasPrefix(last, "builtin ") {
				t.Errorf("%s: module %s: unexpected %q", p.Name, m, last)
			}
		}
		for _, mc := range p.Modprobe {
			for mod, opts := range mc.Options {
				path := paths[mod]
				if path == "" {
					t.Errorf("%s: options for %s, which the profile does not load as a module", p.Name, mod)
					continue
				}
				km, err := kmod.ParseFile(path, kmod.InfoOnly())
				if err != nil {
					t.Fatal(err)
				}
				types := map[string]string{}
				for _, pt := range km.All("parmtype") {
					name, typ, _ := strings.Cut(pt, ":")
					types[name] = typ
				}
				ps, err := parseOptions(opts)
				if err != nil {
					t.Fatal(err)
				}
				for _, prm := range ps {
					typ, ok := types[prm.name]
					if !ok {
						t.Errorf("%s: %s has no parameter %s (has %v)", p.Name, mod, prm.name, types)
						continue
					}
					bits := map[string]int{"byte": 8, "ushort": 16, "uint": 32, "ulong": 64, "ullong": 64}[typ]
					if bits == 0 {
						continue
					}
					if _, err := strconv.ParseUint(prm.value, 10, bits); err != nil {
						t.Errorf("%s: %s.%s=%s does not fit its type %s: %v", p.Name, mod, prm.name, prm.value, typ, err)
					}
				}
			}
		}
	}
}

// TestModulesLoadFileLoadable: every line of the rendered
// modules-load.d file for all profiles resolves with modprobe, as
// systemd-modules-load would look it up.
func TestModulesLoadFileLoadable(t *testing.T) {
	mp := newModprobe(t)
	var all []string
	for _, p := range Profiles() {
		if p.Name != "alibaba" {
			all = append(all, p.Name)
		}
	}
	all = append(all, "alibaba")
	files, err := Render(Options{Profiles: all})
	if err != nil {
		t.Fatal(err)
	}
	var load File
	for _, f := range files {
		if f.Path == ModulesLoadPath {
			load = f
		}
	}
	mods := settings(load)
	if len(mods) < 15 {
		t.Fatalf("only %d modules: %q", len(mods), mods)
	}
	conf := writeModprobeD(t, files)
	args := append([]string{"--show-depends", "-a"}, mods...)
	if out, err := mp.run(t, conf, args...); err != nil || bytes.Contains([]byte(out), []byte("FATAL")) {
		t.Errorf("modprobe -a %v: %v\n%s", mods, err, out)
	}
}
