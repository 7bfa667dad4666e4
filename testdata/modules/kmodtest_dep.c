// SPDX-License-Identifier: GPL-2.0
// Uses kmodtest_base's export, so depmod records depends=kmodtest_base.
#include <linux/module.h>

extern int kmodtest_base_value(void);

static int __init kmodtest_dep_init(void)
{
	pr_info("kmodtest_dep: base says %d\n", kmodtest_base_value());
	return 0;
}
static void __exit kmodtest_dep_exit(void) { }
module_init(kmodtest_dep_init);
module_exit(kmodtest_dep_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("1.0.0");
MODULE_DESCRIPTION("kmodctl test module: depends on kmodtest_base");
