// SPDX-License-Identifier: GPL-2.0
// Prints a fixed marker on the console when loaded: boot tests look for it.
#include <linux/module.h>

static int __init kmodtest_marker_init(void)
{
	pr_emerg("KMODTEST-MARKER: kmodtest_marker loaded\n");
	return 0;
}
static void __exit kmodtest_marker_exit(void) { }
module_init(kmodtest_marker_init);
module_exit(kmodtest_marker_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("1.0.0");
MODULE_DESCRIPTION("kmodctl test module: prints a console marker");
