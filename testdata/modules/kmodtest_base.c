// SPDX-License-Identifier: GPL-2.0
// Exports one symbol so that kmodtest_dep depends on this module.
#include <linux/module.h>

int kmodtest_base_value(void)
{
	return 42;
}
EXPORT_SYMBOL_GPL(kmodtest_base_value);

static int __init kmodtest_base_init(void) { return 0; }
static void __exit kmodtest_base_exit(void) { }
module_init(kmodtest_base_init);
module_exit(kmodtest_base_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("1.0.0");
MODULE_DESCRIPTION("kmodctl test module: exports a symbol");
