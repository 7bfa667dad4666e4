package initramfs

import (
	"bytes"
	"fmt"
	"strings"
)

// The files through which each flavor's early userspace loads modules by
// name (modprobe resolves their dependencies):
//
//   - initramfs-tools: /conf/modules, one module (and its parameters) per
//     line, read by init's load_modules. A later archive replaces the whole
//     file, so the new file holds the old lines plus ours.
//   - dracut with systemd: /etc/modules-load.d/kmodctl.conf, read by
//     systemd-modules-load.service.
//   - dracut without systemd: /etc/cmdline.d/90-kmodctl.conf with
//     rd.driver.pre=, which dracut-lib's getargs reads like the kernel
//     command line and the kernel-modules module's parse hook modprobes.
//   - mkinitcpio: MODULES="..." in /config, which init sources before it
//     runs `modprobe -qab $MODULES`.
const (
	initramfsToolsModulesFile = "conf/modules"
	dracutModulesLoadFile     = "etc/modules-load.d/kmodctl.conf"
	dracutCmdlineFile         = "etc/cmdline.d/90-kmodctl.conf"
	mkinitcpioConfigFile      = "config"
)

// mergeModuleLines returns the lines of a module list file (conf/modules,
// modules-load.d) with the names not yet listed appended, one per line.
// Names compare like kmod's: '-' equals '_'. Comments and parameters stay.
func mergeModuleLines(old []byte, names []string) []byte {
	listed := map[string]bool{}
	for _, line := range strings.Split(string(old), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		listed[normalizeName(f[0])] = true
	}
	var b bytes.Buffer
	b.Write(old)
	if len(old) > 0 && old[len(old)-1] != '\n' {
		b.WriteByte('\n')
	}
	for _, n := range names {
		if listed[normalizeName(n)] {
			continue
		}
		listed[normalizeName(n)] = true
		b.WriteString(n)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// dracutCmdline is the cmdline.d file that makes dracut modprobe names
// before udev starts.
func dracutCmdline(names []string) []byte {
	return []byte("rd.driver.pre=" + strings.Join(names, ",") + "\n")
}

// mergeMkinitcpioConfig adds names to the MODULES="..." assignment of
// mkinitcpio's /config (which mkinitcpio writes only when there are
// modules), or adds the assignment as the first line.
func mergeMkinitcpioConfig(old []byte, names []string) ([]byte, error) {
	lines := strings.SplitAfter(string(old), "\n")
	for i, line := range lines {
		body := strings.TrimRight(line, "\n")
		trimmed := strings.TrimSpace(body)
		if !strings.HasPrefix(trimmed, "MODULES=") {
			continue
		}
		val := strings.TrimPrefix(trimmed, "MODULES=")
		var q string
		switch {
		case len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0]:
			q, val = val[:1], val[1:len(val)-1]
		case strings.ContainsAny(val, "\"'$`()\\ "):
			return nil, fmt.Errorf("mkinitcpio /config: cannot merge into %q", trimmed)
		}
		if strings.ContainsAny(val, "\"'$`\\") {
			return nil, fmt.Errorf("mkinitcpio /config: cannot merge into %q", trimmed)
		}
		words := strings.Fields(val)
		have := map[string]bool{}
		for _, w := range words {
			have[normalizeName(strings.TrimSuffix(w, "?"))] = true
		}
		for _, n := range names {
			if !have[normalizeName(n)] {
				have[normalizeName(n)] = true
				words = append(words, n)
			}
		}
		if q == "" {
			q = `"`
		}
		nl := ""
		if strings.HasSuffix(line, "\n") {
			nl = "\n"
		}
		lines[i] = "MODULES=" + q + strings.Join(words, " ") + q + nl
		return []byte(strings.Join(lines, "")), nil
	}
	return append([]byte(`MODULES="`+strings.Join(names, " ")+"\"\n"), old...), nil
}
