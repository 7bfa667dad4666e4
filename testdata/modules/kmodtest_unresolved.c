// SPDX-License-Identifier: GPL-2.0
// References a kernel function that is not exported (since 5.7), so it can
// never load: built with KBUILD_MODPOST_WARN=1 to exercise the checker.
#include <linux/module.h>

extern unsigned long kallsyms_lookup_name(const char *name);

static int __init kmodtest_unresolved_init(void)
{
	return kallsyms_lookup_name("jiffies") ? 0 : -ENOENT;
}
module_init(kmodtest_unresolved_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodctl test module: unresolved symbol");
