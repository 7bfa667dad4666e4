package image

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// BuilderID identifies artifacts of this builder.
const BuilderID = "kmodctl.kmod-image"

// Artifact is the set of output files of one build.
type Artifact struct {
	dir   string
	files []string
	state map[string]interface{}
}

func (a *Artifact) BuilderId() string { return BuilderID }

// Files lists the disk images first, then the checksums, manifest and log.
func (a *Artifact) Files() []string { return a.files }

// Id is the first output file's base name.
func (a *Artifact) Id() string {
	if len(a.files) == 0 {
		return ""
	}
	return filepath.Base(a.files[0])
}

func (a *Artifact) String() string {
	var names []string
	for _, f := range a.files {
		names = append(names, filepath.Base(f))
	}
	return fmt.Sprintf("disk images in %s: %s", a.dir, strings.Join(names, ", "))
}

// State exposes: kernel_releases ([]string), os_id, os_version_id,
// output_digests (map file name → sha256), manifest (path or ""),
// boot_check ("passed", "disabled"), generated_data.
func (a *Artifact) State(name string) interface{} { return a.state[name] }

// Destroy removes the output files.
func (a *Artifact) Destroy() error {
	var firstErr error
	for _, f := range a.files {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

func newArtifact(b *build) *Artifact {
	a := &Artifact{dir: b.cfg.OutputDir}
	a.files = append(a.files, b.outputs...)
	a.files = append(a.files, filepath.Join(b.cfg.OutputDir, checksumsName))
	if b.manifest != "" {
		a.files = append(a.files, b.manifest)
	}
	bootCheck := "disabled"
	if b.bootResult != nil {
		bootCheck = "passed"
		a.files = append(a.files, filepath.Join(b.cfg.OutputDir, b.cfg.OutputName+"-boot.log"))
	}
	var rels []string
	for _, k := range b.kernels {
		rels = append(rels, k.Release)
	}
	sort.Strings(rels)
	digests := map[string]string{}
	for k, v := range b.checksums {
		digests[k] = v
	}
	a.state = map[string]interface{}{
		"kernel_releases": rels,
		"os_id":           b.osRelease["ID"],
		"os_version_id":   b.osRelease["VERSION_ID"],
		"output_digests":  digests,
		"manifest":        b.manifest,
		"boot_check":      bootCheck,
	}
	return a
}
